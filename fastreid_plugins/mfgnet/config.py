"""MFG-Net config keys (all under ``MODEL.MFGNET``) and their validation.

Reference: Xu, Rong, Zhou, Pan, Liu, "Joint Multiple Fine-grained feature for Vehicle
Re-Identification", Array 14, 100152 (2022).

Keys (defaults = the paper's full model on a ResNet-50):

* ``SPLIT_AT`` ("after_layer4"): where the two branches leave the shared trunk. The paper (Sec.
  2.2): "two feature extraction branches are built after the Conv_5 layer": one shared ResNet
  through ``layer4`` (conv5), each branch = CAM + its heads on the conv5 map. ``"layer3.1"``:
  FastReID's MGN split (each branch owns a copy of ``layer3[1:]`` + ``layer4``, the local one at
  stride 1), ``"layer4"``: each branch owns a copy of ``layer4``; both for comparison.
* ``USE_CAM`` (True), ``CAM_REDUCTION`` (4): channel attention module on each branch's map.
* ``GLOBAL.USE_CONV`` (True): the 1x1 conv before GAP and the 1x1 conv after GAP of the global
  branch; False = plain GAP + BNNeck (the Table 4 baseline). The paper: the conv before GAP keeps
  "the scale of the feature map unchanged", so both convs are C -> C by default:
  ``GLOBAL.REDUCE_DIM`` (0 = C) channels after the conv before GAP, ``GLOBAL.EMBED_DIM`` (0 = C)
  dim after the conv after GAP. Other values (e.g. MBFN's 2048 -> 512 -> 2048) are a deviation.
* ``USE_LOCAL`` (True): the local (stripe) branch. ``NUM_STRIPES`` (4, 1..8). Table 3 counts
  *horizontal division times* k, which give k + 1 stripes (Sec. 4.3: "quartered (the number of
  horizontal divisions is equal to 3)"): Table 3 row k is ``NUM_STRIPES k+1`` (registry row
  ``mfgnet/table3/<k>_divisions``). ``STRIPE_DIRECTION`` ("horizontal"), ``LOCAL.EMBED_DIM``
  (256; per-stripe 1x1 conv after GAP, 0 = none).
* ``LOSS.ALPHA`` (1.0), ``LOSS.BETA`` (0.1): ``L = ALPHA * L_softmax + BETA * L_triplet`` (Eq. 3).
  ``LOSS.USE_TRIPLET`` (True): the batch-hard triplet on the global feature (Table 4).
  ``LOSS.CE_REDUCTION`` ("sum"): L_softmax = sum (or mean) of the CE of every classifier.
  The triplet margin, CE label smoothing and hard mining come from FastReID's
  ``MODEL.LOSSES.TRI.MARGIN`` (paper 0.3), ``MODEL.LOSSES.CE.EPSILON``, ``MODEL.LOSSES.TRI.*``;
  ``MODEL.LOSSES.NAME`` and ``*.SCALE`` do not apply (ALPHA/BETA/USE_TRIPLET replace them):
  a value other than FastReID's default is a ``ConfigError``.

Every row of the paper's Tables 3 and 4, as config overrides of ``configs/veri/mfgnet.yml`` with
the paper's numbers, is data in :mod:`fastreid_plugins.papers.mfgnet` (registry keys
``mfgnet/<table>/<row>``: ``python -m fastreid_plugins.reproduce list mfgnet``).
"""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

from fastreid.config import CfgNode as CN

from ..config import check_bool, check_choice, check_int, check_number
from ..errors import ConfigError, MissingConfigError
from ..method import check_fixed_losses
from ..modeling.parts import DIRECTIONS, SPLIT_POINTS

__all__ = ["add_mfgnet_config", "validate_mfgnet_config", "MAX_STRIPES"]

#: Largest stripe count accepted for ``MODEL.MFGNET.NUM_STRIPES`` (the paper's Table 3 uses 1-5).
MAX_STRIPES = 8


def add_mfgnet_config(cfg: CN) -> CN:
    """Add the ``MODEL.MFGNET`` keys to ``cfg`` in place (idempotent) and return it."""
    if cfg.is_frozen():
        cfg.defrost()
    if "MFGNET" in cfg.MODEL:
        return cfg
    _C = cfg
    _C.MODEL.MFGNET = CN()
    _C.MODEL.MFGNET.SPLIT_AT = "after_layer4"
    _C.MODEL.MFGNET.USE_CAM = True
    _C.MODEL.MFGNET.CAM_REDUCTION = 4
    _C.MODEL.MFGNET.USE_LOCAL = True
    _C.MODEL.MFGNET.NUM_STRIPES = 4
    _C.MODEL.MFGNET.STRIPE_DIRECTION = "horizontal"
    _C.MODEL.MFGNET.GLOBAL = CN()
    _C.MODEL.MFGNET.GLOBAL.USE_CONV = True
    _C.MODEL.MFGNET.GLOBAL.REDUCE_DIM = 0
    _C.MODEL.MFGNET.GLOBAL.EMBED_DIM = 0
    _C.MODEL.MFGNET.LOCAL = CN()
    _C.MODEL.MFGNET.LOCAL.EMBED_DIM = 256
    _C.MODEL.MFGNET.LOSS = CN()
    _C.MODEL.MFGNET.LOSS.ALPHA = 1.0
    _C.MODEL.MFGNET.LOSS.BETA = 0.1
    _C.MODEL.MFGNET.LOSS.USE_TRIPLET = True
    _C.MODEL.MFGNET.LOSS.CE_REDUCTION = "sum"
    return cfg


def validate_mfgnet_config(cfg: CN) -> None:
    """Check every ``MODEL.MFGNET`` value.

    Raises:
        MissingConfigError (a ``KeyError``): ``MODEL.MFGNET`` is missing (``add_mfgnet_config``
            was not applied).
        ConfigError (a ``ValueError``): a value out of range; the message names the key and the
            accepted values.
    """
    if "MFGNET" not in cfg.MODEL:
        raise MissingConfigError("MODEL.MFGNET is missing: build the config with add_mfgnet_config "
                       "(fastreid_plugins.config.get_cfg(add_mfgnet_config))")
    m = cfg.MODEL.MFGNET
    check_choice(m.SPLIT_AT, "MODEL.MFGNET.SPLIT_AT", SPLIT_POINTS)
    check_choice(m.STRIPE_DIRECTION, "MODEL.MFGNET.STRIPE_DIRECTION", DIRECTIONS)
    check_int(m.NUM_STRIPES, "MODEL.MFGNET.NUM_STRIPES", 1, MAX_STRIPES)
    check_int(m.CAM_REDUCTION, "MODEL.MFGNET.CAM_REDUCTION", 1)
    check_int(m.GLOBAL.REDUCE_DIM, "MODEL.MFGNET.GLOBAL.REDUCE_DIM", 0)
    check_int(m.GLOBAL.EMBED_DIM, "MODEL.MFGNET.GLOBAL.EMBED_DIM", 0)
    check_int(m.LOCAL.EMBED_DIM, "MODEL.MFGNET.LOCAL.EMBED_DIM", 0)
    for key in ("ALPHA", "BETA"):
        check_number(m.LOSS[key], f"MODEL.MFGNET.LOSS.{key}")
    if m.LOSS.ALPHA == 0 and (m.LOSS.BETA == 0 or not m.LOSS.USE_TRIPLET):
        raise ConfigError("MODEL.MFGNET.LOSS.ALPHA=0 with no triplet term leaves nothing to train")
    check_choice(m.LOSS.CE_REDUCTION, "MODEL.MFGNET.LOSS.CE_REDUCTION", ("sum", "mean"))
    check_bool(m.USE_CAM, "MODEL.MFGNET.USE_CAM")
    check_bool(m.USE_LOCAL, "MODEL.MFGNET.USE_LOCAL")
    check_bool(m.GLOBAL.USE_CONV, "MODEL.MFGNET.GLOBAL.USE_CONV")
    check_bool(m.LOSS.USE_TRIPLET, "MODEL.MFGNET.LOSS.USE_TRIPLET")
    if cfg.MODEL.BACKBONE.WITH_NL:
        raise ConfigError("MODEL.BACKBONE.WITH_NL=True is not supported by MFG-Net's branch split "
                         "(the non-local blocks would be dropped); set it to False")
    check_fixed_losses(cfg, "MFG-Net", "MODEL.MFGNET.LOSS.{ALPHA, BETA, USE_TRIPLET}")
