"""MBFN config keys (all under ``MODEL.MBFN``) and their validation.

Reference: Rong, Xu, Zhou, Han, Li, Pan, "A vehicle re-identification framework based on the
improved multi-branch feature fusion network", Scientific Reports 11, 20210 (2021).

Keys (defaults = the paper's full model on a ResNet-50):

* ``SPLIT_AT`` ("after_layer4"): where the three branches leave the shared trunk. The paper:
  "construct three feature learning branches (Global Branch, Local Branch1, and Local Branch2)
  after res_conv5 layer": one shared ResNet through ``layer4``. ``"layer3.1"`` (FastReID's MGN
  split: own ``layer3[1:]`` + ``layer4`` per branch, local ones at stride 1) and ``"layer4"`` for
  comparison.
* ``USE_GLOBAL`` / ``USE_LOCAL1`` / ``USE_LOCAL2`` (True): switch each branch (Table 4).
* ``USE_CAM`` (True), ``CAM_REDUCTION`` (4): channel attention in both local branches (Fig. 5, r=4).
* ``LOCAL1.DIRECTION`` / ``LOCAL2.DIRECTION`` ("horizontal"): "horizontal" stripes or "vertical"
  columns; ``LOCAL1.NUM_PARTS`` (2), ``LOCAL2.NUM_PARTS`` (3): parts (1..8). Each local branch
  chooses both independently (Table 2).
* ``GLOBAL.EMBED_DIM`` (0): optional 1x1 conv after GAP of the Global Branch (0 = none).
* ``BRANCH_GLOBAL.ENABLED`` (True): each local branch's own global feature, the "red dotted area"
  of Fig. 3 / Table 4 ("Local Branch1 and Local Branch2 all contain a global branch");
  ``BRANCH_GLOBAL.REDUCE_DIM`` (512) / ``BRANCH_GLOBAL.EMBED_DIM`` (2048): its 1x1 conv before
  GAP (reduces channels) and 1x1 conv after GAP (raises the dimension).
* ``PART_DIM`` (256): per-part 1x1 conv after GAP (0 = none).
* ``WEIGHTS.ENABLED`` (True): weight the parts of Local Branch 2 (Fig. 4); ``WEIGHTS.ALPHA`` (0.3,
  first and last part), ``WEIGHTS.BETA`` (0.4, parts in between) (Table 3); ``WEIGHTS.VALUES``
  ([] = from ALPHA/BETA; otherwise one weight per part); ``WEIGHTS.APPLY_AT`` ("both": training
  triplet features and test descriptor; "train"; "test"); ``WEIGHTS.FUSION`` ("concat" or "sum" of
  the weighted parts); ``WEIGHTS.NORMALIZE`` ("none": the paper's literal weights; "rms": divide
  them by their root mean square, ``w / sqrt(mean(w^2))``, so the weighted parts keep their
  unweighted squared norm on average and only the top:middle:bottom ratio alpha:beta:alpha acts).
  The weighting is the "green dotted area" of Table 4.
* ``LOSS.LAMBDA`` (0.1): ``L = L_softmax + LAMBDA * L_triplet`` (Eq. 3); ``LOSS.CE_REDUCTION``
  ("sum"): L_softmax = sum (or mean) over the classifiers; the triplet terms are summed likewise.
  ``LOSS.TRIPLET_ON_PARTS`` (True): besides each branch's global feature, a triplet on each local
  branch's fused (weighted) part feature, as FastReID's MGN does.
  The margin (paper 1.2), label smoothing and hard mining come from FastReID's
  ``MODEL.LOSSES.TRI.*`` / ``MODEL.LOSSES.CE.*``; ``MODEL.LOSSES.NAME`` and ``*.SCALE`` do not
  apply: a value other than FastReID's default is a ``ConfigError``.

Every ablation row (Tables 2-4), as config overrides of ``configs/veri/mbfn.yml``, is data in
:mod:`fastreid_plugins.papers.mbfn` (registry keys ``mbfn/<table>/<row>``: ``python -m
fastreid_plugins.reproduce list mbfn``).
"""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

from fastreid.config import CfgNode as CN

from ..config import check_bool, check_choice, check_int, check_number
from ..errors import ConfigError, MissingConfigError
from ..method import check_fixed_losses
from ..modeling.parts import DIRECTIONS, SPLIT_POINTS

__all__ = ["add_mbfn_config", "validate_mbfn_config", "MAX_PARTS", "WEIGHT_NORMS"]

#: Largest number of parts accepted for ``MODEL.MBFN.LOCAL{1,2}.NUM_PARTS``.
MAX_PARTS = 8
#: ``MODEL.MBFN.WEIGHTS.NORMALIZE`` values.
WEIGHT_NORMS = ("none", "rms")


def add_mbfn_config(cfg: CN) -> CN:
    """Add the ``MODEL.MBFN`` keys to ``cfg`` in place (idempotent) and return it."""
    if cfg.is_frozen():
        cfg.defrost()
    if "MBFN" in cfg.MODEL:
        return cfg
    _C = cfg
    _C.MODEL.MBFN = CN()
    _C.MODEL.MBFN.SPLIT_AT = "after_layer4"
    _C.MODEL.MBFN.USE_GLOBAL = True
    _C.MODEL.MBFN.USE_LOCAL1 = True
    _C.MODEL.MBFN.USE_LOCAL2 = True
    _C.MODEL.MBFN.USE_CAM = True
    _C.MODEL.MBFN.CAM_REDUCTION = 4
    _C.MODEL.MBFN.LOCAL1 = CN()
    _C.MODEL.MBFN.LOCAL1.DIRECTION = "horizontal"
    _C.MODEL.MBFN.LOCAL1.NUM_PARTS = 2
    _C.MODEL.MBFN.LOCAL2 = CN()
    _C.MODEL.MBFN.LOCAL2.DIRECTION = "horizontal"
    _C.MODEL.MBFN.LOCAL2.NUM_PARTS = 3
    _C.MODEL.MBFN.GLOBAL = CN()
    _C.MODEL.MBFN.GLOBAL.EMBED_DIM = 0
    _C.MODEL.MBFN.BRANCH_GLOBAL = CN()
    _C.MODEL.MBFN.BRANCH_GLOBAL.ENABLED = True
    _C.MODEL.MBFN.BRANCH_GLOBAL.REDUCE_DIM = 512
    _C.MODEL.MBFN.BRANCH_GLOBAL.EMBED_DIM = 2048
    _C.MODEL.MBFN.PART_DIM = 256
    _C.MODEL.MBFN.WEIGHTS = CN()
    _C.MODEL.MBFN.WEIGHTS.ENABLED = True
    _C.MODEL.MBFN.WEIGHTS.ALPHA = 0.3
    _C.MODEL.MBFN.WEIGHTS.BETA = 0.4
    _C.MODEL.MBFN.WEIGHTS.VALUES = []
    _C.MODEL.MBFN.WEIGHTS.APPLY_AT = "both"
    _C.MODEL.MBFN.WEIGHTS.FUSION = "concat"
    _C.MODEL.MBFN.WEIGHTS.NORMALIZE = "none"
    _C.MODEL.MBFN.LOSS = CN()
    _C.MODEL.MBFN.LOSS.LAMBDA = 0.1
    _C.MODEL.MBFN.LOSS.CE_REDUCTION = "sum"
    _C.MODEL.MBFN.LOSS.TRIPLET_ON_PARTS = True
    return cfg


def validate_mbfn_config(cfg: CN) -> None:
    """Check every ``MODEL.MBFN`` value.

    Raises:
        MissingConfigError (a ``KeyError``): ``MODEL.MBFN`` is missing (``add_mbfn_config``
            was not applied).
        ConfigError (a ``ValueError``): a value out of range; the message names the key and the
            accepted values.
    """
    if "MBFN" not in cfg.MODEL:
        raise MissingConfigError("MODEL.MBFN is missing: build the config with add_mbfn_config "
                       "(fastreid_plugins.config.get_cfg(add_mbfn_config))")
    m = cfg.MODEL.MBFN
    for key in ("USE_GLOBAL", "USE_LOCAL1", "USE_LOCAL2", "USE_CAM"):
        check_bool(m[key], f"MODEL.MBFN.{key}")
    check_bool(m.WEIGHTS.ENABLED, "MODEL.MBFN.WEIGHTS.ENABLED")
    check_bool(m.BRANCH_GLOBAL.ENABLED, "MODEL.MBFN.BRANCH_GLOBAL.ENABLED")
    check_bool(m.LOSS.TRIPLET_ON_PARTS, "MODEL.MBFN.LOSS.TRIPLET_ON_PARTS")
    if not (m.USE_GLOBAL or m.USE_LOCAL1 or m.USE_LOCAL2):
        raise ConfigError("MODEL.MBFN.USE_GLOBAL, USE_LOCAL1 and USE_LOCAL2 are all False: "
                         "at least one branch is needed")
    check_choice(m.SPLIT_AT, "MODEL.MBFN.SPLIT_AT", SPLIT_POINTS)
    for k in ("LOCAL1", "LOCAL2"):
        check_choice(m[k].DIRECTION, f"MODEL.MBFN.{k}.DIRECTION", DIRECTIONS)
    check_int(m.LOCAL1.NUM_PARTS, "MODEL.MBFN.LOCAL1.NUM_PARTS", 1, MAX_PARTS)
    check_int(m.LOCAL2.NUM_PARTS, "MODEL.MBFN.LOCAL2.NUM_PARTS", 1, MAX_PARTS)
    check_int(m.CAM_REDUCTION, "MODEL.MBFN.CAM_REDUCTION", 1)
    check_int(m.GLOBAL.EMBED_DIM, "MODEL.MBFN.GLOBAL.EMBED_DIM", 0)
    check_int(m.BRANCH_GLOBAL.REDUCE_DIM, "MODEL.MBFN.BRANCH_GLOBAL.REDUCE_DIM", 1)
    check_int(m.BRANCH_GLOBAL.EMBED_DIM, "MODEL.MBFN.BRANCH_GLOBAL.EMBED_DIM", 1)
    check_int(m.PART_DIM, "MODEL.MBFN.PART_DIM", 0)
    check_number(m.WEIGHTS.ALPHA, "MODEL.MBFN.WEIGHTS.ALPHA")
    check_number(m.WEIGHTS.BETA, "MODEL.MBFN.WEIGHTS.BETA")
    vals = list(m.WEIGHTS.VALUES)
    if vals:
        if len(vals) != m.LOCAL2.NUM_PARTS:
            raise ConfigError(f"MODEL.MBFN.WEIGHTS.VALUES has {len(vals)} weights but "
                              f"MODEL.MBFN.LOCAL2.NUM_PARTS={m.LOCAL2.NUM_PARTS}: give one per "
                              "part, or []")
        for i, v in enumerate(vals):
            check_number(v, f"MODEL.MBFN.WEIGHTS.VALUES[{i}]")
    check_choice(m.WEIGHTS.APPLY_AT, "MODEL.MBFN.WEIGHTS.APPLY_AT", ("both", "train", "test"))
    check_choice(m.WEIGHTS.NORMALIZE, "MODEL.MBFN.WEIGHTS.NORMALIZE", WEIGHT_NORMS)
    check_choice(m.WEIGHTS.FUSION, "MODEL.MBFN.WEIGHTS.FUSION", ("concat", "sum"))
    check_number(m.LOSS.LAMBDA, "MODEL.MBFN.LOSS.LAMBDA")
    check_choice(m.LOSS.CE_REDUCTION, "MODEL.MBFN.LOSS.CE_REDUCTION", ("sum", "mean"))
    if cfg.MODEL.BACKBONE.WITH_NL:
        raise ConfigError("MODEL.BACKBONE.WITH_NL=True is not supported by MBFN's branch split "
                         "(the non-local blocks would be dropped); set it to False")
    check_fixed_losses(cfg, "MBFN", "MODEL.MBFN.LOSS.{LAMBDA, TRIPLET_ON_PARTS}")
