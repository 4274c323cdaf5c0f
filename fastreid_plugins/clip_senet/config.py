"""CLIP-SENet config keys: everything lives under ``MODEL.CLIPSENET`` (plus the shared SupCon node).

* ``SEM.ENABLED`` (True): use the TinyCLIP image encoder (Table IV ablation when False).
* ``SEM.VARIANT`` ("TinyCLIP-ViT-61M-32"): or "TinyCLIP-ViT-40M-32".
* ``SEM.PRETRAIN`` (True) / ``SEM.WEIGHTS`` (""): load a local ``transformers`` directory or
  state-dict file (an empty path with PRETRAIN True is an error).
* ``SEM.FREEZE`` (False): fix the encoder (the paper trains it).
* ``SEM.USE_PROJECTION`` (True): f_clip = CLIP's projected image embedding (512-d).
* ``SEM.HIDDEN_SIZE / NUM_LAYERS / NUM_HEADS / INTERMEDIATE_SIZE / PATCH_SIZE / INPUT_SIZE /
  PROJECTION_DIM`` (0 = the variant's): a smaller encoder, e.g. random-init on CPU.
* ``SEM.HIDDEN_ACT`` (""): the variant's ("gelu") or the weights directory's ``config.json``.
* ``FUSION.DIM`` (0 = ``MODEL.BACKBONE.FEAT_DIM``): dimension of f_fuse (Eq. 3).
* ``AFEM.ENABLED`` (True) / ``AFEM.GROUPS`` (32): Eq. 4 (Table V varies G from 4 to 128).
* ``COMBINE`` ("sum"): Eq. 5, "sum" or "concat".
* ``CV.CAMERA`` / ``CV.VIEWPOINT`` (True / True): camera / viewpoint embeddings;
  ``CV.NUM_CAMERAS`` / ``CV.NUM_VIEWPOINTS`` (20 / 8, VeRi-776); ``CV.COE`` (3.0, TransReID's
  lambda); ``CV.POSITION`` ("sem_tokens": added to the SEM's tokens, or "feature": to the final
  feature).
* ``SEED`` (-1): an alias of the shared top-level ``SEED`` key (:mod:`fastreid_plugins.seeding`),
  used when ``SEED`` is -1 (the paper uses 3407); setting both to different values is an error.

Losses use FastReID's ``MODEL.LOSSES``: ``NAME`` ("CrossEntropyLoss", "SupConLoss") by default,
"TripletLoss" instead of "SupConLoss" for Fig. 3; ``MODEL.LOSSES.SUPCON`` comes from
:func:`fastreid_plugins.losses.supcon.add_supcon_config`.
"""

from fastreid.config import CfgNode as CN

from ..losses.supcon import add_supcon_config

__all__ = ["add_clip_senet_config"]


def add_clip_senet_config(cfg):
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

    _C.FUSION = CN()
    _C.FUSION.DIM = 0

    _C.AFEM = CN()
    _C.AFEM.ENABLED = True
    _C.AFEM.GROUPS = 32

    _C.COMBINE = "sum"

    _C.CV = CN()
    _C.CV.CAMERA = True
    _C.CV.VIEWPOINT = True
    _C.CV.NUM_CAMERAS = 20
    _C.CV.NUM_VIEWPOINTS = 8
    _C.CV.COE = 3.0
    _C.CV.POSITION = "sem_tokens"

    _C.SEED = -1
    return cfg
