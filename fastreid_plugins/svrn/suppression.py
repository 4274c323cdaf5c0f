"""Salience-guided suppression masks (Algorithm 1) and their up-sampling (Eq. 5).

Reference:
    Qian, He, Chen, Peng. Navigating Diverse Salient Features for Vehicle Re-identification.
    IEEE T-ITS 2022, Sec. III-A, Algorithm 1 and Eq. 5.
"""

import torch
import torch.nn.functional as F

__all__ = ["suppression_mask", "random_suppression_mask", "upsample_mask"]


def suppression_mask(scores, n):
    """Binary mask with the ``n`` highest-scoring cells of each image set to 0 (Algorithm 1).

    Exactly ``n`` cells are suppressed per image even when scores tie: cells are ranked by a
    *stable* descending sort of the row-major flattened grid, so among equal scores the cell
    with the lower flat index (top-left first) is suppressed first. The scores are detached:
    no gradient flows through the mask.

    Args:
        scores (Tensor): (B, G, G) salience map S_t.
        n (int): number of cells to suppress, 0 <= n <= G*G.

    Returns:
        Tensor: (B, G, G) mask M_t of the scores' dtype, 0 at the suppressed cells, 1 elsewhere.

    Raises:
        ValueError: ``scores`` is not (B, G, G) or ``n`` is out of range.
    """
    if scores.dim() != 3:
        raise ValueError(f"scores must be (B, G, G), got {tuple(scores.shape)}")
    b = scores.shape[0]
    flat = scores.detach().reshape(b, -1)
    if not 0 <= n <= flat.shape[1]:
        raise ValueError(f"n={n} cells to suppress, but the grid has {flat.shape[1]} cells")
    mask = torch.ones_like(flat)
    if n > 0:
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :n]
        mask.scatter_(1, order, 0.0)
    return mask.view_as(scores)


def random_suppression_mask(batch, grid, n, device=None, dtype=torch.float32, generator=None):
    """Ablation: suppress ``n`` uniformly random cells per image (no salience navigation).

    Returns:
        Tensor: (B, G, G) mask with exactly ``n`` zeros per image.
    """
    scores = torch.rand(batch, grid, grid, device=device, generator=generator)
    return suppression_mask(scores, n).to(dtype)


def upsample_mask(mask, size):
    """Nearest-neighbour up-sampling Up(M_t) of a (B, G, G) mask to ``size`` = (H, W) (Eq. 5).

    Returns:
        Tensor: (B, 1, H, W).

    Raises:
        ValueError: H or W is not a multiple of G (each cell must cover whole pixels).
    """
    g = mask.shape[-1]
    h, w = size
    if h % g or w % g:
        raise ValueError(
            f"Cannot up-sample the {g}x{g} suppression mask onto a {h}x{w} map: the size of the "
            f"feature at MODEL.SVRN.START_BLOCKS must be a multiple of MODEL.SVRN.GRID={g}. "
            "Use a larger input (INPUT.SIZE_TRAIN/SIZE_TEST) or a later start block.")
    return F.interpolate(mask[:, None], size=(h, w), mode="nearest")
