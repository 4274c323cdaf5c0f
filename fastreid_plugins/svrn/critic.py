"""Grid-based critic: how much does masking each grid cell hurt the stage classifier (Eq. 2-3)?

Reference:
    Qian, He, Chen, Peng. Navigating Diverse Salient Features for Vehicle Re-identification.
    IEEE T-ITS 2022, Sec. III-A, Eq. 2 (masked-grid cross-entropy C_s(i, j)) and Eq. 3
    (per-image min-max normalisation -> R_score).

For every cell (i, j) of a G x G grid over X_t (each cell covers (H/G) x (W/G) locations),
X_t is zeroed inside the cell and fed to stage t's classification block; C_s(i, j) is the
cross-entropy of the resulting logits against the true vehicle ID. A large C_s(i, j) means the
cell carries identity evidence (salient). Everything runs under ``torch.no_grad()``.

Two exact implementations score all G^2 cells at once (never a Python loop of G^2 forwards):

* ``"decomposed"`` (default): the reduction layer is per-location (1x1 conv + BN + ReLU), so
  the reduction output of a masked map equals the unmasked one outside the cell and the
  constant ``f0 = relu(BN(0))`` inside it. The GAP of every masked map is therefore
  ``(sum_all - sum_cell + |cell| * f0) / (H W)``: one pooling of the already computed
  reduction output, then BNNeck + FC on B x G^2 vectors. Cost ~ one extra FC on B*G^2 rows.
* ``"batched"``: builds the B x G^2 masked maps and runs the block on them in one call
  (general, G^2 times the block's cost; used to cross-check and for non-pointwise blocks).

Both normalise with the statistics of the unmasked forward (``stats``): the batch statistics
in training, the running ones in eval mode; no running statistic is updated.
"""

from typing import Optional, Tuple, Union

import torch
import torch.nn.functional as F

from .layers import BlockStats, ClassificationBlock, check_grid

__all__ = ["grid_critic", "minmax_normalise", "cell_masks"]


def minmax_normalise(c: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Per-image min-max normalisation of (B, ...) scores to [0, 1] (Eq. 3).

    An image whose scores are all equal gets all zeros.
    """
    flat = c.reshape(c.shape[0], -1)
    lo = flat.min(dim=1, keepdim=True).values
    hi = flat.max(dim=1, keepdim=True).values
    return ((flat - lo) / (hi - lo).clamp_min(eps)).view_as(c)


def cell_masks(grid: int, h: int, w: int, device: Optional[Union[str, torch.device]] = None,
               dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The G^2 single-cell masks: (G*G, 1, H, W), mask k is 0 on cell k (row-major), 1 elsewhere."""
    ch, cw = h // grid, w // grid
    eye = torch.eye(grid * grid, device=device, dtype=dtype).view(grid * grid, 1, grid, grid)
    cells = eye.repeat_interleave(ch, dim=2).repeat_interleave(cw, dim=3)
    return 1.0 - cells


@torch.no_grad()
def grid_critic(block: ClassificationBlock, x: torch.Tensor, targets: torch.Tensor, grid: int = 8,
                stats: Optional[BlockStats] = None, reduced: Optional[torch.Tensor] = None,
                mode: str = "decomposed") -> Tuple[torch.Tensor, torch.Tensor]:
    """Masked-grid cross-entropies C_s and the reward target R_score (Eq. 2-3).

    Args:
        block (ClassificationBlock): stage t's classification block.
        x (Tensor): (B, C, H, W) stage feature X_t; H and W divisible by ``grid``.
        targets (Tensor): (B,) vehicle ID labels.
        grid (int): G (8 in the paper).
        stats (BlockStats, optional): normalisation statistics of the unmasked forward;
            None = the block's current mode (batch statistics of ``x`` in training, running
            statistics in eval) computed here without touching the running statistics.
        reduced (Tensor, optional): (B, D, H, W) reduction output of ``x`` under ``stats``
            (reused by ``"decomposed"`` to avoid recomputing it).
        mode (str): ``"decomposed"`` or ``"batched"``.

    Returns:
        tuple: ``(r_score, c_s)``, both (B, G, G): R_score in [0, 1] and the raw C_s.

    Raises:
        ValueError: the map does not split into ``grid`` x ``grid`` cells, or unknown mode.
    """
    check_grid(x, grid)
    b, _, h, w = x.shape
    g2 = grid * grid
    if stats is None:
        stats, reduced = block.current_stats(x), None
    if mode == "decomposed":
        if reduced is None:
            reduced = block.reduce(x, stats)[0]
        d = reduced.shape[1]
        ch, cw = h // grid, w // grid
        red = reduced.float() if reduced.dtype in (torch.float16, torch.bfloat16) else reduced
        cell_sum = red.view(b, d, grid, ch, grid, cw).sum(dim=(3, 5)).reshape(b, d, g2)
        total = cell_sum.sum(dim=2, keepdim=True)
        f0 = block.reduce(x.new_zeros(1, x.shape[1], 1, 1), stats)[0].to(red.dtype).view(1, d, 1)
        masked = (total - cell_sum + (ch * cw) * f0) / (h * w)       # (B, D, G^2)
        masked = masked.transpose(1, 2).reshape(b * g2, d).to(reduced.dtype)
        logits = block.head(masked, stats)[1]
    elif mode == "batched":
        masks = cell_masks(grid, h, w, x.device, x.dtype)             # (G^2, 1, H, W)
        xm = (x[:, None] * masks[None]).reshape(b * g2, *x.shape[1:])
        logits = block(xm, stats)["logits"]
    else:
        raise ValueError(f"MODEL.SVRN.CRITIC.MODE={mode!r}: expected 'decomposed' or 'batched'")
    if logits.dtype in (torch.float16, torch.bfloat16):   # AMP: score in fp32
        logits = logits.float()
    ce = F.cross_entropy(logits, targets.repeat_interleave(g2), reduction="none")
    c_s = ce.view(b, grid, grid)
    return minmax_normalise(c_s), c_s
