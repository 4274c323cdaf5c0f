"""CLIP-SENet config keys: everything lives under ``MODEL.CLIPSENET`` (plus the shared SupCon node).

* ``SEM.ENABLED`` (True): use the TinyCLIP image encoder (Table IV ablation when False).
* ``SEM.VARIANT`` ("TinyCLIP-ViT-61M-32"): or "TinyCLIP-ViT-40M-32".
* ``SEM.PRETRAIN`` (True) / ``SEM.WEIGHTS`` (""): load a local ``transformers`` directory or
  state-dict file (an empty path with PRETRAIN True is an error).
* ``SEM.FREEZE`` (False): fix the encoder (the paper trains it).
* ``SEM.USE_PROJECTION`` (True): f_clip = CLIP's projected image embedding (512-d).
* ``SEM.HIDDEN_SIZE / NUM_LAYERS / NUM_HEADS / INTERMEDIATE_SIZE / PATCH_SIZE / INPUT_SIZE /
  PROJECTION_DIM`` (0 = the variant's): a smaller encoder, e.g. random-init on CPU.
* ``SEM.HIDDEN_ACT`` (""): the variant's ("gelu") or the weights directory's ``config.json``; the
  activation is also stored in the model's state dict, so ``--eval-only`` rebuilds it.
* ``SEM.POS_EMBED_INTERP`` ("bilinear"): how pretrained position embeddings are resized when
  ``SEM.INPUT_SIZE`` differs from the checkpoint's (CLIP-ReID: bilinear); "bicubic"; "" refuses.
* ``SEM.LR_FACTOR`` (1.0) / ``SEM.WEIGHT_DECAY`` (-1.0): the SEM's learning rate is
  ``SOLVER.BASE_LR x LR_FACTOR`` and its weight decay ``WEIGHT_DECAY`` (< 0: FastReID's
  ``SOLVER.WEIGHT_DECAY`` / ``WEIGHT_DECAY_NORM``), one optimizer group
  (:meth:`~fastreid_plugins.clip_senet.CLIPSENetTrainer.build_optimizer`).
* ``FUSION.DIM`` (0 = ``MODEL.BACKBONE.FEAT_DIM``): dimension of f_fuse (Eq. 3).
* ``AFEM.ENABLED`` (True) / ``AFEM.GROUPS`` (32): Eq. 4 (Table V varies G from 4 to 128);
  ``AFEM.WEIGHT_SHAPE`` ("group": one scalar per group; "channel": one weight per channel).
* ``COMBINE`` ("sum"): Eq. 5, "sum" or "concat".
* ``CV.CAMERA`` / ``CV.VIEWPOINT`` (True / True): camera / viewpoint embeddings;
  ``CV.NUM_CAMERAS`` / ``CV.NUM_VIEWPOINTS`` (20 / 8, VeRi-776); ``CV.COE`` (3.0, TransReID's
  lambda); ``CV.POSITION`` ("feature": added to the final feature, the one position every
  Table IV row can use; "sem_tokens": to the SEM's tokens); ``CV.VIEWPOINT_GROUPS`` ("": the
  8 VeRi orientations; "paper4": front / front side / rear side / rear, NUM_VIEWPOINTS 4).
* ``SEED`` (-1): an alias of the shared top-level ``SEED`` key (:mod:`fastreid_plugins.seeding`),
  used when ``SEED`` is -1 (the paper uses 3407); setting both to different values is an error.

Losses use FastReID's ``MODEL.LOSSES``: ``NAME`` ("CrossEntropyLoss", "SupConLoss") by default,
"TripletLoss" instead of "SupConLoss" for Fig. 3; ``MODEL.LOSSES.SUPCON`` comes from
:func:`fastreid_plugins.losses.supcon.add_supcon_config`.

Every ablation row of the paper (Tables IV-VI, Fig. 3), as config overrides of
``configs/veri/clip_senet.yml`` with the paper's numbers, is data in
:mod:`fastreid_plugins.papers.clip_senet` (registry keys ``clip_senet/<table>/<row>``:
``python -m fastreid_plugins.reproduce list clip_senet``).
"""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

from typing import Sequence

from fastreid.config import CfgNode as CN
from fastreid.layers import pooling

from ..errors import ConfigError, MissingConfigError
from ..losses.supcon import add_supcon_config
from .modules import VIEWPOINT_GROUPS
from .tinyclip import TINYCLIP_VARIANTS

__all__ = ["add_clip_senet_config", "validate_clip_senet_config", "check_loss_names",
           "SUPPORTED_LOSSES", "CV_POSITIONS"]

#: ``MODEL.LOSSES.NAME`` entries CLIP-SENet computes
SUPPORTED_LOSSES = ("CrossEntropyLoss", "SupConLoss", "TripletLoss")
#: ``MODEL.CLIPSENET.CV.POSITION`` values: add the CV embedding to the SEM's tokens or the feature
CV_POSITIONS = ("sem_tokens", "feature")


def add_clip_senet_config(cfg: CN) -> CN:
    """Add ``MODEL.CLIPSENET`` (and the shared ``MODEL.LOSSES.SUPCON``) to ``cfg`` in place.

    Idempotent; returns ``cfg``.
    """
    if cfg.is_frozen():
        cfg.defrost()
    add_supcon_config(cfg)
    if "CLIPSENET" in cfg.MODEL:
        return cfg
    _C = cfg.MODEL.CLIPSENET = CN()

    _C.SEM = CN()
    _C.SEM.ENABLED = True
    _C.SEM.VARIANT = "TinyCLIP-ViT-61M-32"
    _C.SEM.PRETRAIN = True
    _C.SEM.WEIGHTS = ""
    _C.SEM.FREEZE = False
    _C.SEM.USE_PROJECTION = True
    _C.SEM.HIDDEN_SIZE = 0
    _C.SEM.NUM_LAYERS = 0
    _C.SEM.NUM_HEADS = 0
    _C.SEM.INTERMEDIATE_SIZE = 0
    _C.SEM.PATCH_SIZE = 0
    _C.SEM.INPUT_SIZE = 0
    _C.SEM.PROJECTION_DIM = 0
    _C.SEM.HIDDEN_ACT = ""
    _C.SEM.POS_EMBED_INTERP = "bilinear"
    _C.SEM.LR_FACTOR = 1.0
    _C.SEM.WEIGHT_DECAY = -1.0

    _C.FUSION = CN()
    _C.FUSION.DIM = 0

    _C.AFEM = CN()
    _C.AFEM.ENABLED = True
    _C.AFEM.GROUPS = 32
    _C.AFEM.WEIGHT_SHAPE = "group"

    _C.COMBINE = "sum"

    _C.CV = CN()
    _C.CV.CAMERA = True
    _C.CV.VIEWPOINT = True
    _C.CV.NUM_CAMERAS = 20
    _C.CV.NUM_VIEWPOINTS = 8
    _C.CV.COE = 3.0
    _C.CV.POSITION = "feature"
    _C.CV.VIEWPOINT_GROUPS = ""

    _C.SEED = -1
    return cfg


def check_loss_names(names: Sequence[str]) -> None:
    """Raises ConfigError unless ``MODEL.LOSSES.NAME`` is a non-empty subset of
    :data:`SUPPORTED_LOSSES`."""
    unknown = [n for n in names if n not in SUPPORTED_LOSSES]
    if unknown or not names:
        raise ConfigError(f"MODEL.LOSSES.NAME={tuple(names)}: CLIPSENet supports "
                          f"{SUPPORTED_LOSSES}, got unknown {unknown}")


def validate_clip_senet_config(cfg: CN) -> None:
    """Check the keys CLIP-SENet reads before any module is built.

    Raises:
        MissingConfigError (a ``KeyError``): ``MODEL.CLIPSENET`` is missing.
        ConfigError (a ``ValueError``): an unknown pooling layer, CV position, viewpoint grouping
            or loss name, AFEM without the SEM, or CV on the SEM's tokens without the SEM.
    """
    if "CLIPSENET" not in cfg.MODEL:
        raise MissingConfigError("MODEL.CLIPSENET is missing: build the config with "
                                 "get_cfg(add_clip_senet_config).")
    c = cfg.MODEL.CLIPSENET
    pool_name = cfg.MODEL.HEADS.POOL_LAYER
    if not hasattr(pooling, pool_name):
        raise ConfigError(f"MODEL.HEADS.POOL_LAYER={pool_name!r} is not a FastReID pooling layer")
    if c.SEM.ENABLED and c.SEM.VARIANT not in TINYCLIP_VARIANTS:
        raise ConfigError(f"MODEL.CLIPSENET.SEM.VARIANT={c.SEM.VARIANT!r} is not a known "
                          f"TinyCLIP variant; choose one of {sorted(TINYCLIP_VARIANTS)}.")
    if c.AFEM.ENABLED and not c.SEM.ENABLED:
        raise ConfigError("MODEL.CLIPSENET.AFEM.ENABLED needs MODEL.CLIPSENET.SEM.ENABLED "
                          "(AFEM refines the SEM's f_clip).")
    if c.CV.POSITION not in CV_POSITIONS:
        raise ConfigError(f"MODEL.CLIPSENET.CV.POSITION={c.CV.POSITION!r} must be one of "
                          f"{CV_POSITIONS}")
    if c.CV.CAMERA or c.CV.VIEWPOINT:
        if c.CV.POSITION == "sem_tokens" and not c.SEM.ENABLED:
            raise ConfigError("MODEL.CLIPSENET.CV.POSITION 'sem_tokens' needs the SEM; with "
                              "SEM.ENABLED False set CV.POSITION 'feature' or turn CV off.")
        if c.CV.VIEWPOINT_GROUPS and c.CV.VIEWPOINT_GROUPS not in VIEWPOINT_GROUPS:
            raise ConfigError(f"MODEL.CLIPSENET.CV.VIEWPOINT_GROUPS={c.CV.VIEWPOINT_GROUPS!r} "
                              "must be '' (VeRi's 8 orientations) or one of "
                              f"{sorted(VIEWPOINT_GROUPS)}")
    check_loss_names(tuple(cfg.MODEL.LOSSES.NAME))
