"""Salience-guided suppression masks (Algorithm 1) and their up-sampling (Eq. 5).

Reference:
    Qian, He, Chen, Peng. Navigating Diverse Salient Features for Vehicle Re-identification.
    IEEE T-ITS 2022, Sec. III-A, Algorithm 1 and Eq. 5.
"""

from typing import Optional, Sequence, Union

import torch
import torch.nn.functional as F

__all__ = ["suppression_mask", "random_suppression_mask", "upsample_mask"]


def suppression_mask(scores: torch.Tensor, n: int,
                     available: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Binary mask with the ``n`` highest-scoring cells of each image set to 0 (Algorithm 1).

    Exactly ``n`` cells are suppressed per image even when scores tie: cells are ranked by a
    *stable* descending sort of the row-major flattened grid, so among equal scores the cell
    with the lower flat index (top-left first) is suppressed first. The scores are detached:
    no gradient flows through the mask.

    Reference: SVRN Algorithm 1; with ``available``, the text after Eq. 5: "Once a region has
    been chosen, it won't be chosen again during the following stages".

    Args:
        scores (Tensor): (B, G, G) salience map S_t.
        n (int): number of cells to suppress, 0 <= n <= G*G.
        available (Tensor, optional): (B, G, G), 1 at the cells that may be chosen (those no
            earlier stage suppressed), 0 elsewhere; the n cells are the top-n *among them*
            (each image must have at least n). None: all cells.

    Returns:
        Tensor: (B, G, G) mask M_t of the scores' dtype, 0 at the n cells chosen, 1 elsewhere
        (cells that were not available stay 1: multiply by ``available`` for the union).

    Raises:
        ValueError: ``scores`` is not (B, G, G), ``available`` has another shape, or ``n`` is
            out of range.
    """
    if scores.dim() != 3:
        raise ValueError(f"scores must be (B, G, G), got {tuple(scores.shape)}")
    b = scores.shape[0]
    flat = scores.detach().reshape(b, -1)
    if not 0 <= n <= flat.shape[1]:
        raise ValueError(f"n={n} cells to suppress, but the grid has {flat.shape[1]} cells")
    if available is not None:
        if available.shape != scores.shape:
            raise ValueError(f"available must have the scores' shape {tuple(scores.shape)}, "
                             f"got {tuple(available.shape)}")
        # already suppressed cells sort last (the config check leaves >= n available cells)
        flat = flat.masked_fill(available.detach().reshape(b, -1) == 0, float("-inf"))
    mask = torch.ones_like(flat)
    if n > 0:
        order = torch.sort(flat, dim=1, descending=True, stable=True).indices[:, :n]
        mask.scatter_(1, order, 0.0)
    return mask.view_as(scores)


def random_suppression_mask(batch: int, grid: int, n: int,
                            device: Optional[Union[str, torch.device]] = None,
                            dtype: torch.dtype = torch.float32,
                            generator: Optional[torch.Generator] = None,
                            available: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Ablation: suppress ``n`` uniformly random cells per image (no salience navigation),
    among the ``available`` ones (see :func:`suppression_mask`).

    Returns:
        Tensor: (B, G, G) mask with exactly ``n`` zeros per image.
    """
    scores = torch.rand(batch, grid, grid, device=device, generator=generator)
    return suppression_mask(scores, n, available=available).to(dtype)


def upsample_mask(mask: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
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
