"""Config keys shared by every plugin project (method-specific keys live under ``MODEL.<METHOD>``).

Added by :func:`add_plugins_config`:

* ``TEST.VEHICLEID.NUM_TRIALS`` (10) / ``TEST.VEHICLEID.SEED`` (0): the VehicleID protocol's
  repeated random gallery draws (Liu et al. CVPR 2016), seeded for reproducibility.
* ``TEST.RERANK.TYPE`` ("sparse"): which k-reciprocal re-ranking ``TEST.RERANK.ENABLED`` uses,
  the sparse O(k n)-memory one or FastReID's dense one ("fastreid").
* ``TEST.EVAL_MEMORY_GB`` (1.0): budget (GiB) of the query-chunked evaluation's block working
  set (:mod:`fastreid_plugins.evaluation.chunked`); the block size follows from it and G.
* ``TEST.RERANK.KNN`` ("exact"): k-NN of the sparse re-ranker, ``"exact"`` or faiss's approximate
  ``"ivf"`` / ``"hnsw"``, with ``KNN_NLIST`` (0 = 4 sqrt(N)), ``KNN_NPROBE`` (64) and
  ``KNN_EF_SEARCH`` (128).
* ``SEED`` (-1): the seed of every random draw of a run (Python, NumPy, torch, the training
  sampler and the augmentations; :mod:`fastreid_plugins.seeding`), shared by every project.
  ``-1`` draws one, logs it and writes it into the run's ``config.yaml``; with a fixed seed two
  runs on the CPU give bit-identical checkpoints. CLIP-SENet's ``MODEL.CLIPSENET.SEED`` and
  SVRN's ``MODEL.SVRN.SEED`` (their keys before ``SEED``) are aliases (used when ``SEED`` is -1).
* ``MODEL.BACKBONE.IBN_LAYOUT`` ("ibnnet"): where ``build_resnext_backbone`` puts IBN with
  ``WITH_IBN``: IBN-Net's layout (layer1-3; plain BN in layer4, the layout of IBN-Net's published
  ``resnext101_ibn_a``), or "fastreid" (FastReID 1.4.0's ResNeXt: layer1-4). See
  :mod:`fastreid_plugins.modeling.pretrained`.
* ``SOLVER.OPT "AMSGrad"`` is accepted as a value: Adam with ``amsgrad=True`` (Reddi et al.,
  ICLR 2018), which FastReID's optimizer builder cannot ask for.
* ``DIST.GATHER_LOSSES`` (True) / ``DIST.GLOBAL_SAMPLER`` (True): multi-process
  training (see :mod:`fastreid_plugins.distributed`).
"""

from typing import Any, Callable, Dict

from fastreid.config import CfgNode as CN
from fastreid.config import get_cfg as _fastreid_get_cfg

from .errors import ConfigError

__all__ = ["PLUGIN_DEFAULTS", "add_plugins_config", "require_plugins_config", "get_cfg"]

#: Every shared plugin key and its default: the one place these defaults live. Code reads the
#: keys directly (``cfg.TEST.RERANK.KNN``); only a patched FastReID path that must also accept
#: FastReID's own configs (the ResNeXt builder's ``IBN_LAYOUT``) falls back to this table.
PLUGIN_DEFAULTS: Dict[str, Any] = {
    "TEST.VEHICLEID.NUM_TRIALS": 10,
    "TEST.VEHICLEID.SEED": 0,
    "SEED": -1,
    # "sparse": O(k n)-memory k-reciprocal re-ranking (fastreid_plugins.evaluation.sparse_rerank)
    # "fastreid": FastReID's dense N x N compute_jaccard_distance path
    "TEST.RERANK.TYPE": "sparse",
    "TEST.EVAL_MEMORY_GB": 1.0,
    "TEST.RERANK.KNN": "exact",
    "TEST.RERANK.KNN_NLIST": 0,
    "TEST.RERANK.KNN_NPROBE": 64,
    "TEST.RERANK.KNN_EF_SEARCH": 128,
    "MODEL.BACKBONE.IBN_LAYOUT": "ibnnet",
    "DIST.GATHER_LOSSES": True,
    "DIST.GLOBAL_SAMPLER": True,
}


def _has(cfg, dotted):
    node = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def add_plugins_config(cfg: CN) -> CN:
    """Add the shared plugin keys (:data:`PLUGIN_DEFAULTS`) to ``cfg`` in place (idempotent:
    keys already there keep their values)."""
    cfg.defrost() if cfg.is_frozen() else None
    for dotted, value in PLUGIN_DEFAULTS.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for part in parents:
            if part not in node:
                node[part] = CN()
            node = node[part]
        if leaf not in node:
            node[leaf] = value
    return cfg


def require_plugins_config(cfg: CN, who: str = "fastreid_plugins") -> None:
    """Fail at once when ``cfg`` lacks the shared plugin keys (built by FastReID's ``get_cfg``
    alone), instead of an ``AttributeError`` deep inside a run.

    Raises:
        ConfigError: naming the missing keys and :func:`add_plugins_config` / :func:`get_cfg`.
    """
    missing = [k for k in PLUGIN_DEFAULTS if not _has(cfg, k)]
    if missing:
        raise ConfigError(
            f"{who} needs a config with the plugin keys, but {', '.join(missing)} "
            f"{'are' if len(missing) > 1 else 'is'} missing: build it with "
            "fastreid_plugins.config.get_cfg(add_<method>_config) or call "
            "fastreid_plugins.config.add_plugins_config(cfg) before merging the config file.")


def get_cfg(*add_fns: Callable[[CN], Any]) -> CN:
    """FastReID's default config + the shared plugin keys + each ``add_<method>_config`` given."""
    cfg = _fastreid_get_cfg()
    add_plugins_config(cfg)
    for fn in add_fns:
        fn(cfg)
    return cfg
