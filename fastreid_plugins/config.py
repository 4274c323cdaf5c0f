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
* ``TEST.VERIFICATION.ENABLED`` (False): verification metrics in the evaluator
  (:mod:`fastreid_plugins.evaluation.verification`, docs/verification.md): ROC, TAR at FAR
  1e-2 / 1e-3 / 1e-4, EER and AUC over the query-gallery pairs, from ``BINS`` (65536)-bin
  distance histograms streamed over the query blocks, exact where ``Q G <= EXACT_PAIRS``
  (2,000,000); ``BOTH_METRICS`` (False) adds the other of cosine / euclidean; ``FAR`` (1e-3)
  is the operating point drawn in ``OUTPUT_DIR/<dataset>_verification.png``.
* ``DIST.GATHER_LOSSES`` (True) / ``DIST.GLOBAL_SAMPLER`` (True): multi-process
  training (see :mod:`fastreid_plugins.distributed`).
* ``SOLVER.KEEP_FULL_CHECKPOINTS`` (False): when a training run finishes, ``model_final.pth`` (and
  ``model_best.pth``) are rewritten weights-only (model, epoch, the run's config:
  :func:`fastreid_plugins.checkpoint.weights_only`) and the intermediate ``model_XXXX.pth`` are
  removed: the optimizer / scheduler / sampler state is only needed to resume an unfinished run
  (a demo-sized MFG-Net checkpoint: 195.8 MB full, 49.0 MB weights-only). True keeps every
  checkpoint as written (e.g. to train a finished run longer with ``--resume`` and a larger
  ``SOLVER.MAX_EPOCH``).
"""

from __future__ import annotations

import difflib
import os
import re
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from .errors import ConfigError, ConfigFileNotFoundError

if TYPE_CHECKING:  # FastReID's config node; imported where used (this module needs no FastReID)
    from fastreid.config import CfgNode as CN

__all__ = ["PLUGIN_DEFAULTS", "get_key", "add_plugins_config", "require_plugins_config", "get_cfg",
           "config_keys", "suggest_keys", "merge_config_file", "merge_overrides",
           "check_bool", "check_int", "check_number", "check_choice"]

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
    # verification metrics (ROC, TAR@FAR, EER, AUC): fastreid_plugins.evaluation.verification
    "TEST.VERIFICATION.ENABLED": False,
    "TEST.VERIFICATION.BINS": 65536,
    "TEST.VERIFICATION.EXACT_PAIRS": 2_000_000,
    "TEST.VERIFICATION.BOTH_METRICS": False,
    "TEST.VERIFICATION.FAR": 1e-3,
    "SOLVER.KEEP_FULL_CHECKPOINTS": False,
}


_MISSING = object()


def get_key(cfg: Mapping[str, Any], dotted: str, default: Any = None) -> Any:
    """The value of the dotted key ``dotted`` (``"MODEL.SVRN.SEED"``) in a config or a nested
    dict, or ``default`` when a part of the path is missing (no error)."""
    node: Any = cfg
    for part in dotted.split("."):
        if not isinstance(node, dict) or part not in node:
            return default
        node = node[part]
    return node


def _has(cfg, dotted):
    return get_key(cfg, dotted, _MISSING) is not _MISSING


def add_plugins_config(cfg: CN) -> CN:
    """Add the shared plugin keys (:data:`PLUGIN_DEFAULTS`) to ``cfg`` in place (idempotent:
    keys already there keep their values)."""
    cfg.defrost() if cfg.is_frozen() else None
    for dotted, value in PLUGIN_DEFAULTS.items():
        *parents, leaf = dotted.split(".")
        node = cfg
        for part in parents:
            if part not in node:
                node[part] = type(cfg)()
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
    from fastreid.config import get_cfg as _fastreid_get_cfg

    cfg = _fastreid_get_cfg()
    add_plugins_config(cfg)
    for fn in add_fns:
        fn(cfg)
    return cfg


# --------------------------------------------------------------------------------------------
# value checks for the methods' validate_<method>_config: one message format for every key
# --------------------------------------------------------------------------------------------
def check_bool(value: Any, key: str) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``value`` is ``True`` or ``False``."""
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be True or False")


def check_int(value: Any, key: str, lo: int, hi: Optional[int] = None) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``value`` is an int (not a bool) in
    ``lo..hi`` (``hi=None``: no upper bound)."""
    if (not isinstance(value, int) or isinstance(value, bool) or value < lo
            or (hi is not None and value > hi)):
        rng = f"in {lo}..{hi}" if hi is not None else f">= {lo}"
        raise ConfigError(f"{key}={value!r} must be an int {rng}")


def check_number(value: Any, key: str, lo: float = 0) -> None:
    """Raise :class:`ConfigError` naming ``key`` unless ``value`` is an int or float (not a
    bool) ``>= lo``."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or value < lo:
        raise ConfigError(f"{key}={value!r} must be a number >= {lo}")


def check_choice(value: Any, key: str, choices: Sequence[Any]) -> None:
    """Raise :class:`ConfigError` naming ``key`` and the accepted values unless ``value`` is one
    of ``choices``."""
    if value not in choices:
        raise ConfigError(f"{key}={value!r} must be one of {tuple(choices)}")


# --------------------------------------------------------------------------------------------
# merging files and KEY VALUE overrides, with errors that name the key and suggest the real one
# --------------------------------------------------------------------------------------------
_UNKNOWN_KEY = re.compile(r"Non-existent (?:config )?key: (\S+)")


def config_keys(cfg: Mapping[str, Any], prefix: str = "") -> List[str]:
    """Every dotted key of ``cfg`` (nodes and leaves), e.g. ``MODEL.MBFN.LOCAL1.NUM_PARTS``."""
    keys = []
    for k, v in cfg.items():
        full = f"{prefix}{k}"
        keys.append(full)
        if isinstance(v, dict):
            keys.extend(config_keys(v, full + "."))
    return keys


def suggest_keys(cfg: Mapping[str, Any], key: str, n: int = 5) -> List[str]:
    """Existing keys close to the unknown dotted ``key``, best first.

    ``difflib.get_close_matches`` over every dotted key, plus the keys that end with the unknown
    key's last component, or start like it, under the same top-level node (so
    ``MODEL.MBFN.NUM_PART`` suggests ``MODEL.MBFN.LOCAL1.NUM_PARTS``).
    """
    keys = config_keys(cfg)
    parts = key.split(".")
    leaf, parent = parts[-1], ".".join(parts[:-1])
    same_leaf = [k for k in keys if k.split(".")[-1] in (leaf, leaf + "S", leaf.rstrip("S"))
                 or (len(leaf) >= 4 and k.split(".")[-1].startswith(leaf))]
    # keys under the unknown key's nearest existing parent first
    same_leaf.sort(key=lambda k: (not k.startswith(parent + ".") if parent else False,
                                  k.count("."), k))
    out = same_leaf
    for k in difflib.get_close_matches(key, keys, n=n, cutoff=0.75):
        if k not in out:
            out.append(k)
    return out[:n]


def _unknown_key_error(cfg, key, source):
    hint = suggest_keys(cfg, key)
    msg = f"unknown config key {key!r} (in {source})."
    if hint:
        msg += " Did you mean: " + ", ".join(hint) + "?"
    else:
        msg += " No similar key exists in this config."
    return ConfigError(msg + "\nA method's keys exist only for its own project (e.g. MODEL.MBFN.* "
                       "with projects/MBFN/train_net.py).")


def merge_config_file(cfg: CN, path: Union[str, os.PathLike]) -> CN:
    """``cfg.merge_from_file(path)`` with :class:`~fastreid_plugins.errors.ConfigError` for a
    missing file, a YAML syntax error, an unknown key (with suggestions) or a mistyped value.

    Raises:
        ConfigFileNotFoundError: ``path`` does not exist (also a ``FileNotFoundError``).
        ConfigError: as above; the message names the file and the key.
    """
    import yaml

    if not path or not os.path.isfile(path):
        raise ConfigFileNotFoundError(f"--config-file not found: {path!r}. Pass an existing .yml "
                                      "file, e.g. --config-file configs/demo/mfgnet.yml.")
    try:
        cfg.merge_from_file(path)
    except (KeyError, AssertionError, ValueError, yaml.YAMLError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        m = _UNKNOWN_KEY.search(str(text))
        if m:
            raise _unknown_key_error(cfg, m.group(1), f"--config-file {path}") from None
        raise ConfigError(f"cannot merge --config-file {path!r}: {text}") from None
    return cfg


def merge_overrides(cfg: CN, opts: Optional[Sequence[Any]]) -> CN:
    """``cfg.merge_from_list(opts)`` (the ``KEY VALUE`` pairs after the options) with
    :class:`~fastreid_plugins.errors.ConfigError` for an odd list, an option placed after the
    overrides, an unknown key (with suggestions) or a value of the wrong type.

    Raises:
        ConfigError: as above; the message names the key and value.
    """
    opts = list(opts or [])
    flags = [o for o in opts[0::2] if isinstance(o, str) and o.startswith("--")]
    if flags:
        raise ConfigError(f"{flags[0]!r} appears among the KEY VALUE overrides: options must "
                          "come before KEY VALUE overrides (e.g. `--config-file F --eval-only "
                          "MODEL.WEIGHTS W`).")
    if len(opts) % 2:
        raise ConfigError(f"the KEY VALUE overrides have an odd length ({len(opts)}): "
                          f"{' '.join(map(str, opts))!r}; every key needs a value.")
    for key in opts[0::2]:
        node = cfg
        for part in str(key).split("."):
            if not isinstance(node, dict) or part not in node:
                raise _unknown_key_error(cfg, key, "the command-line overrides")
            node = node[part]
    try:
        cfg.merge_from_list(opts)
    except (KeyError, AssertionError, ValueError) as e:
        raise ConfigError(f"cannot apply the override(s) {' '.join(map(str, opts))!r}: "
                          f"{e.args[0] if e.args else e}") from None
    return cfg
