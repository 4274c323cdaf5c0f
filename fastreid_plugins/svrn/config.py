"""SVRN config keys (all under ``MODEL.SVRN``) and their validation.

Reference:
    Qian, He, Chen, Peng. Navigating Diverse Salient Features for Vehicle Re-identification.
    IEEE T-ITS 2022 (Sec. III, Eq. 1-13, Tables II-VI).

Block numbering used by ``MODEL.SVRN.START_BLOCKS`` (the ResNet "conv{b}_x" naming)::

    block 1 = conv1/bn1/relu/maxpool (stem)   block 2 = layer1   block 3 = layer2
    block 4 = layer3                          block 5 = layer4

Stage 1 is the whole backbone (blocks 1-5). Stage t+1 (t >= 1) with start block ``b`` takes
stage t's output of block ``b`` (``O_t``), multiplies it by the up-sampled suppression mask
(``O_t x Up(M_t)``, Eq. 5) and runs its own deep copies of blocks ``b+1 .. 5``. The default
``(3, 4)`` therefore makes stage 2 re-run copies of ``layer3``/``layer4`` on the masked
``layer2`` output, and stage 3 a copy of ``layer4`` on the masked ``layer3`` output: the paper's
"the second stage starts from block 3 ..., the third stage starts from block 4" (Sec. IV-B) with
its blocks read as ResNet layers, as Eq. 5's "map M_1 with X_1^3" (X_t^n = input of layer n)
requires. ``(2, 3)`` is the conv{b}_x reading (2.68x the Baseline's MACs instead of 2.28x).

Every row of the paper's Tables II-VI (and our own extra ablations), as config overrides of
``configs/veri/svrn.yml`` with the paper's numbers, is data in :mod:`fastreid_plugins.papers.svrn`
(registry keys ``svrn/<table>/<row>``: ``python -m fastreid_plugins.reproduce list svrn``). The
default config is Table II scheme b = Table III 3 stages = Table IV scheme e = Table V SVRN+CSC =
Table VI beta_V 0.30 / beta_I 0.15.
"""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

from fastreid.config import CfgNode as CN

from ..errors import ConfigError, MissingConfigError

__all__ = ["add_svrn_config", "validate_svrn_config", "num_suppressed"]

SIM_NAMES = ("spatial", "residual", "none")
CRITIC_MODES = ("decomposed", "batched")
MASK_MODES = ("salience", "random")
ROUNDINGS = ("floor", "round")
#: test descriptor (Sec. III-C): sum over stages of F_t ("gap", the paper's words), of the
#: L2-normalised F_t ("gap_l2"), of the unified G_t = g(F_t) ("unified", Eq. 6) or of the
#: BNNeck features ("bn")
EVAL_FEATS = ("gap", "gap_l2", "unified", "bn")


def add_svrn_config(cfg: CN) -> CN:
    """Add the SVRN keys under ``MODEL.SVRN`` (idempotent; nothing else is touched).

    Defaults follow the paper where it is explicit (T = 3, alpha = (0.2, 0.1) = Table IV
    scheme (e), beta_V = 0.3, beta_I = 0.15, an 8x8 critic grid) and
    ``projects/SVRN/README.md`` lists the choices made where it is silent.
    """
    frozen = cfg.is_frozen()
    cfg.defrost()
    if "SVRN" not in cfg.MODEL:
        _C = cfg.MODEL.SVRN = CN()
        # pyramid suppression network (Sec. III-A, Eq. 5)
        _C.NUM_STAGES = 3
        _C.START_BLOCKS = [3, 4]      # one per stage t >= 2, strictly increasing, in [1, 4]
        _C.ALPHAS = [0.2, 0.1]        # suppression ratio of stage t's mask, t = 1..T-1 (Table IV e)
        _C.GRID = 8                   # critic / salience grid: GRID x GRID cells (Eq. 2)
        _C.N_ROUNDING = "floor"       # n = floor(alpha * GRID^2) ("round": nearest, half up)
        _C.MASK_MODE = "salience"     # "random": n random cells (ablation, no navigation)
        # after Eq. 5: "Once a region has been chosen, it won't be chosen again during the
        # following stages": stage t picks its n_t cells among those not yet suppressed and
        # stage t+1's input is masked by the union M_1..M_t. False: top-n over all cells and
        # M_t alone (this project's behaviour before issue 12)
        _C.ACCUMULATE_MASKS = True
        _C.SEED = -1                  # alias of the shared top-level SEED (seeding.SEED_ALIASES)

        # spatial information mining module (Sec. III-A): see svrn/layers.py
        _C.SIM = CN()
        _C.SIM.NAME = "spatial"       # "spatial" | "residual" | "none"
        _C.SIM.HIDDEN = 16
        _C.SIM.KERNEL = 7

        # per-stage classification block: reduction (1x1 conv+BN+ReLU), GAP, BN, FC
        _C.REDUCTION_DIM = 512
        _C.EVAL_FEAT = "gap"          # inference: sum over stages of F_t; see EVAL_FEATS

        # grid critic + reward loss (Eq. 2-4)
        _C.CRITIC = CN()
        _C.CRITIC.MODE = "decomposed"  # exact closed form; "batched": B*G^2 masked maps in one pass
        _C.REWARD = CN()
        _C.REWARD.ENABLED = True
        _C.REWARD.SCALE = 1.0
        _C.REWARD.DETACH_FEAT = True  # the ranking layer sees X_t.detach(): L_reward trains only it

        # cross-space constraint (Sec. III-B, Eq. 6-12)
        _C.CROSS = CN()
        _C.CROSS.UNIFIED_DIM = 256
        _C.CROSS.VCC = CN({"ENABLED": True, "MARGIN": 0.3, "SCALE": 1.0})
        _C.CROSS.ICC = CN({"ENABLED": True, "MARGIN": 0.15, "SCALE": 1.0})
        # NORMALIZE: L2-normalise the rows of G^i before the Gram matrix (our deviation from the
        # literal Eq. 11, see projects/SVRN/README.md); False = Eq. 11 as written
        _C.CROSS.DCC = CN({"ENABLED": True, "SCALE": 1.0, "NORMALIZE": True})
    if frozen:
        cfg.freeze()
    return cfg


def num_suppressed(alpha: float, cells: int, rounding: str = "floor") -> int:
    """Number of cells Algorithm 1 suppresses: ``n = floor(alpha * cells)`` (or nearest, half up).

    Args:
        alpha (float): suppression ratio in [0, 1).
        cells (int): number of grid cells (64 for the 8x8 grid).
        rounding (str): ``"floor"`` (default) or ``"round"`` (nearest integer, .5 rounds up).

    Returns:
        int: n, with ``0 <= n < cells``.
    """
    x = alpha * cells
    # 1e-9 guards against 0.1 * 64 = 6.3999999... style float error
    n = int(x + 1e-9) if rounding == "floor" else int(x + 0.5 + 1e-9)
    return max(0, min(n, cells - 1))


def _err(key, value, expected):
    return ConfigError(f"MODEL.SVRN.{key}={value!r} is invalid: expected {expected}.")


def validate_svrn_config(cfg: CN) -> None:
    """Validate ``MODEL.SVRN`` (and the backbone keys SVRN depends on).

    Raises:
        MissingConfigError: ``MODEL.SVRN`` is missing.
        ConfigError (a ``ValueError``): naming the offending key, its value and what was
            expected, e.g. an alpha outside [0, 1), start blocks not strictly increasing in
            [1, 4], a number of alphas or start blocks that is not NUM_STAGES - 1, an unknown
            SIM / critic / mask mode, or ICC / DCC enabled with a single stage.
    """
    if "SVRN" not in cfg.MODEL:
        raise MissingConfigError("MODEL.SVRN is missing: build the config with add_svrn_config "
                                 "(fastreid_plugins.config.get_cfg(add_svrn_config))")
    C = cfg.MODEL.SVRN
    alphas = _check_stages(C)
    _check_suppression(C, alphas)
    _check_modules(C)
    _check_cross_losses(C)
    if cfg.MODEL.BACKBONE.NAME != "build_resnet_backbone":
        raise ConfigError(f"MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME!r}: SVRN duplicates "
                         "ResNet blocks and needs 'build_resnet_backbone'.")
    if cfg.MODEL.BACKBONE.WITH_NL:
        raise ConfigError("MODEL.BACKBONE.WITH_NL=True is not supported by SVRN (its stages run "
                         "the ResNet layers block by block); set it False.")


def _check_stages(C: CN) -> list:
    """NUM_STAGES, START_BLOCKS and ALPHAS (one start block and one ratio per stage t >= 2);
    returns the alphas."""
    T = C.NUM_STAGES
    if not isinstance(T, int) or T < 1:
        raise _err("NUM_STAGES", T, "an integer >= 1")
    starts, alphas = list(C.START_BLOCKS), list(C.ALPHAS)
    if len(starts) != T - 1:
        raise _err("START_BLOCKS", starts, f"NUM_STAGES - 1 = {T - 1} start blocks "
                   "(one per stage t >= 2)")
    if len(alphas) != T - 1:
        raise _err("ALPHAS", alphas, f"NUM_STAGES - 1 = {T - 1} suppression ratios "
                   "(one per mask M_1..M_{T-1})")
    for b in starts:
        if not isinstance(b, int) or not 1 <= b <= 4:
            raise _err("START_BLOCKS", starts, "integers in [1, 4] (1 = stem, 2-4 = layer1-3; "
                       "the next stage re-runs copies of the blocks after it)")
    if any(b2 <= b1 for b1, b2 in zip(starts, starts[1:])):
        raise _err("START_BLOCKS", starts, "strictly increasing start blocks (stage t+1 branches "
                   "off a block that stage t itself computed); they are out of order")
    for a in alphas:
        if not isinstance(a, (int, float)) or not 0.0 <= float(a) < 1.0:
            raise _err("ALPHAS", alphas, "every suppression ratio alpha in [0, 1)")
    return alphas


def _check_suppression(C: CN, alphas: list) -> None:
    """GRID, N_ROUNDING, MASK_MODE, ACCUMULATE_MASKS, and that the masks leave a cell (and have
    a reward loss to train the salience ranking)."""
    if not isinstance(C.GRID, int) or C.GRID < 1:
        raise _err("GRID", C.GRID, "a positive integer (8 in the paper)")
    if C.N_ROUNDING not in ROUNDINGS:
        raise _err("N_ROUNDING", C.N_ROUNDING, f"one of {ROUNDINGS}")
    if C.MASK_MODE not in MASK_MODES:
        raise _err("MASK_MODE", C.MASK_MODE, f"one of {MASK_MODES}")
    if not isinstance(C.ACCUMULATE_MASKS, bool):
        raise _err("ACCUMULATE_MASKS", C.ACCUMULATE_MASKS, "True or False")
    cells = C.GRID * C.GRID
    n = [num_suppressed(a, cells, C.N_ROUNDING) for a in alphas]
    if C.ACCUMULATE_MASKS and sum(n) >= cells:
        raise _err("ALPHAS", alphas, f"suppression ratios whose cells (n_t = {n}) leave at least "
                   f"one of the {cells} grid cells unsuppressed (with ACCUMULATE_MASKS the "
                   "stages' suppressed regions add up)")
    if C.MASK_MODE == "salience" and any(n) and not C.REWARD.ENABLED:
        raise _err("REWARD.ENABLED", False,
                   "True with MASK_MODE 'salience': the reward loss (Eq. 4) is the only thing that "
                   "trains the salience ranking layers, so without it the masks would come from "
                   "their random initial weights (and DDP stops on parameters without a "
                   "gradient). For suppression without salience navigation use MODEL.SVRN."
                   "MASK_MODE random (no ranking layer, no critic); for no suppression, ALPHAS "
                   "of 0")


def _check_modules(C: CN) -> None:
    """SIM, REDUCTION_DIM and EVAL_FEAT."""
    if C.SIM.NAME not in SIM_NAMES:
        raise _err("SIM.NAME", C.SIM.NAME, f"one of {SIM_NAMES}")
    if C.SIM.KERNEL < 1 or C.SIM.KERNEL % 2 == 0:
        raise _err("SIM.KERNEL", C.SIM.KERNEL, "an odd kernel size >= 1")
    if C.SIM.HIDDEN < 1:
        raise _err("SIM.HIDDEN", C.SIM.HIDDEN, "a positive number of hidden channels")
    if C.REDUCTION_DIM < 1:
        raise _err("REDUCTION_DIM", C.REDUCTION_DIM, "a positive channel count")
    if C.EVAL_FEAT not in EVAL_FEATS:
        raise _err("EVAL_FEAT", C.EVAL_FEAT, f"one of {EVAL_FEATS}")
    if C.EVAL_FEAT == "unified" and not any(C.CROSS[k].ENABLED for k in ("VCC", "ICC", "DCC")):
        raise _err("EVAL_FEAT", "unified", "'gap', 'gap_l2' or 'bn' when every cross-space term "
                   "(MODEL.SVRN.CROSS.{VCC,ICC,DCC}.ENABLED) is off: the unified layer g is "
                   "only built (and trained) for them")


def _check_cross_losses(C: CN) -> None:
    """The critic and the cross-space losses (VCC / ICC / DCC)."""
    T = C.NUM_STAGES
    if C.CRITIC.MODE not in CRITIC_MODES:
        raise _err("CRITIC.MODE", C.CRITIC.MODE, f"one of {CRITIC_MODES}")
    if C.CROSS.UNIFIED_DIM < 1:
        raise _err("CROSS.UNIFIED_DIM", C.CROSS.UNIFIED_DIM, "a positive dimension")
    for k in ("VCC", "ICC"):
        if C.CROSS[k].MARGIN < 0:
            raise _err(f"CROSS.{k}.MARGIN", C.CROSS[k].MARGIN, "a non-negative margin")
    if T == 1:
        for k in ("ICC", "DCC"):
            if C.CROSS[k].ENABLED:
                raise _err(f"CROSS.{k}.ENABLED", True, f"False when NUM_STAGES=1 ({k} compares "
                           "the stages of one image)")
