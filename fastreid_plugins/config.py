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

from fastreid.config import CfgNode as CN
from fastreid.config import get_cfg as _fastreid_get_cfg

__all__ = ["add_plugins_config", "get_cfg"]


def add_plugins_config(cfg):
    """Add the shared plugin keys to ``cfg`` in place (idempotent)."""
    cfg.defrost() if cfg.is_frozen() else None
    if "VEHICLEID" not in cfg.TEST:
        cfg.TEST.VEHICLEID = CN()
        cfg.TEST.VEHICLEID.NUM_TRIALS = 10
        cfg.TEST.VEHICLEID.SEED = 0
    if "SEED" not in cfg:
        cfg.SEED = -1
    if "TYPE" not in cfg.TEST.RERANK:
        # "sparse": O(k n)-memory k-reciprocal re-ranking (fastreid_plugins.evaluation.sparse_rerank)
        # "fastreid": FastReID's dense N x N compute_jaccard_distance path
        cfg.TEST.RERANK.TYPE = "sparse"
    if "EVAL_MEMORY_GB" not in cfg.TEST:
        cfg.TEST.EVAL_MEMORY_GB = 1.0
    if "KNN" not in cfg.TEST.RERANK:
        cfg.TEST.RERANK.KNN = "exact"
        cfg.TEST.RERANK.KNN_NLIST = 0
        cfg.TEST.RERANK.KNN_NPROBE = 64
        cfg.TEST.RERANK.KNN_EF_SEARCH = 128
    if "IBN_LAYOUT" not in cfg.MODEL.BACKBONE:
        cfg.MODEL.BACKBONE.IBN_LAYOUT = "ibnnet"
    if "DIST" not in cfg:
        cfg.DIST = CN()
        cfg.DIST.GATHER_LOSSES = True
        cfg.DIST.GLOBAL_SAMPLER = True
    return cfg


def get_cfg(*add_fns):
    """FastReID's default config + the shared plugin keys + each ``add_<method>_config`` given."""
    cfg = _fastreid_get_cfg()
    add_plugins_config(cfg)
    for fn in add_fns:
        fn(cfg)
    return cfg
