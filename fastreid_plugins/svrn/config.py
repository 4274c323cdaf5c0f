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
``layer2`` output, and stage 3 a copy of ``layer4`` on the masked ``layer3`` output.
"""

from fastreid.config import CfgNode as CN

__all__ = ["add_svrn_config", "check_svrn_config", "num_suppressed"]

SIM_NAMES = ("spatial", "residual", "none")
CRITIC_MODES = ("decomposed", "batched")
MASK_MODES = ("salience", "random")
ROUNDINGS = ("floor", "round")
EVAL_FEATS = ("gap", "bn")


def add_svrn_config(cfg):
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

        # spatial information mining module (Sec. III-A): see svrn/layers.py
        _C.SIM = CN()
        _C.SIM.NAME = "spatial"       # "spatial" | "residual" | "none"
        _C.SIM.HIDDEN = 16
        _C.SIM.KERNEL = 7

        # per-stage classification block: reduction (1x1 conv+BN+ReLU), GAP, BN, FC
        _C.REDUCTION_DIM = 512
        _C.EVAL_FEAT = "gap"          # inference: sum over stages of the GAP ("gap") or BN ("bn") feature

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
        _C.CROSS.DCC = CN({"ENABLED": True, "SCALE": 1.0})
    if frozen:
        cfg.freeze()
    return cfg


def num_suppressed(alpha, cells, rounding="floor"):
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
    return ValueError(f"MODEL.SVRN.{key}={value!r} is invalid: expected {expected}.")


def check_svrn_config(cfg):
    """Validate ``MODEL.SVRN`` (and the backbone keys SVRN depends on).

    Raises:
        ValueError: naming the offending key, its value and what was expected, e.g. an alpha
            outside [0, 1), start blocks not strictly increasing in [1, 4], a number of alphas
            or start blocks that is not NUM_STAGES - 1, an unknown SIM / critic / mask mode, or
            ICC / DCC enabled with a single stage.
    """
    C = cfg.MODEL.SVRN
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
    if not isinstance(C.GRID, int) or C.GRID < 1:
        raise _err("GRID", C.GRID, "a positive integer (8 in the paper)")
    if C.N_ROUNDING not in ROUNDINGS:
        raise _err("N_ROUNDING", C.N_ROUNDING, f"one of {ROUNDINGS}")
    if C.MASK_MODE not in MASK_MODES:
        raise _err("MASK_MODE", C.MASK_MODE, f"one of {MASK_MODES}")
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
    if cfg.MODEL.BACKBONE.NAME != "build_resnet_backbone":
        raise ValueError(f"MODEL.BACKBONE.NAME={cfg.MODEL.BACKBONE.NAME!r}: SVRN duplicates "
                         "ResNet blocks and needs 'build_resnet_backbone'.")
    if cfg.MODEL.BACKBONE.WITH_NL:
        raise ValueError("MODEL.BACKBONE.WITH_NL=True is not supported by SVRN (its stages run "
                         "the ResNet layers block by block); set it False.")
