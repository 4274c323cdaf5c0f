"""SVRN losses: reward loss (Eq. 4) and the cross-space constraint VCC / ICC / DCC (Eq. 7-12).

Reference:
    Qian, He, Chen, Peng. Navigating Diverse Salient Features for Vehicle Re-identification.
    IEEE T-ITS 2022, Sec. III-A (Eq. 4) and Sec. III-B (Eq. 6-12).

The cross-space terms take the unified features of all stages stacked as a (T, B, L) tensor
``feats`` (``feats[t, i]`` = G_t^i, stage t's unified feature of image i). Distances are
Euclidean, ``sqrt(max(||a||^2 + ||b||^2 - 2 a.b, 1e-12))`` (FastReID's ``euclidean_dist``
convention, safe to back-propagate at zero distance).

Under DDP, VCC and ICC are computed over the whole multi-process batch: the (T, B/N, L) features
and (B/N,) labels of every rank are concatenated along the batch dimension (with gradient, see
:func:`fastreid_plugins.distributed.gather.gather_for_loss`; ``gather``), so image i of rank r
becomes image ``r B/N + i`` of the gathered batch (ICC's image indices are offset per rank) and
every rank computes the single-process loss. ``DIST.GATHER_LOSSES False`` keeps each rank's own
images.
"""

import torch
import torch.nn.functional as F

from ..distributed.gather import gather_for_loss

__all__ = ["reward_loss", "vcc_loss", "icc_loss", "dcc_loss", "pairwise_euclidean"]


def pairwise_euclidean(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(N, L) x (M, L) -> (N, M) Euclidean distances (clamped at 1e-12 before the sqrt)."""
    x, y = x.float(), y.float()
    d2 = (x * x).sum(1, keepdim=True) + (y * y).sum(1)[None] - 2.0 * x @ y.t()
    return d2.clamp_min(1e-12).sqrt()


def reward_loss(scores: torch.Tensor, r_score: torch.Tensor) -> torch.Tensor:
    """L_reward = |R_score - S_t|^2, averaged over the G x G cells and the batch (Eq. 4).

    Args:
        scores (Tensor): (B, G, G) salience map S_t (with gradient).
        r_score (Tensor): (B, G, G) critic target in [0, 1] (no gradient).

    Returns:
        Tensor: scalar.
    """
    return ((r_score.detach().float() - scores.float()) ** 2).mean()


def _hard_triplet(dist, is_pos, is_neg, margin):
    """Batch-hard margin loss: mean over anchors having a positive and a negative of
    ``relu(max_pos d - min_neg d + margin)`` (Hermans et al. 2017). 0 if no anchor qualifies."""
    inf = torch.finfo(dist.dtype).max
    d_ap = torch.where(is_pos, dist, torch.full_like(dist, -inf)).max(dim=1).values
    d_an = torch.where(is_neg, dist, torch.full_like(dist, inf)).min(dim=1).values
    valid = is_pos.any(dim=1) & is_neg.any(dim=1)
    if not bool(valid.any()):
        return dist.sum() * 0.0
    return F.relu(d_ap[valid] - d_an[valid] + margin).mean()


def _flatten(feats):
    if feats.dim() != 3:
        raise ValueError(f"feats must be (T, B, L) stage-stacked unified features, "
                         f"got {tuple(feats.shape)}")
    t, b, _ = feats.shape
    return feats.reshape(t * b, -1), t, b


def vcc_loss(feats: torch.Tensor, targets: torch.Tensor, margin: float = 0.3,
             gather: bool = True) -> torch.Tensor:
    """Vehicle-level cross-space constraint L_vcc (Eq. 7-8).

    Batch-hard triplet over the pooled set of all T*B unified features: for each anchor
    G_t^i, the positive is the farthest feature (any stage) of the same vehicle ID other than
    the anchor itself, the negative the closest feature (any stage) of another vehicle ID.

    Args:
        feats (Tensor): (T, B, L).
        targets (Tensor): (B,) vehicle IDs.
        margin (float): beta_V (0.3).
        gather (bool): gather every DDP rank's features first (``DIST.GATHER_LOSSES``).

    Returns:
        Tensor: scalar, mean over anchors of ``relu(d_ap - d_an + beta_V)``.
    """
    feats, targets = gather_for_loss(feats, targets, dim=1, enabled=gather)
    z, t, b = _flatten(feats)
    labels = targets.reshape(1, b).expand(t, b).reshape(-1)
    dist = pairwise_euclidean(z, z)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(t * b, dtype=torch.bool, device=z.device)
    return _hard_triplet(dist, same & ~eye, ~same, margin)


def icc_loss(feats: torch.Tensor, margin: float = 0.15, gather: bool = True) -> torch.Tensor:
    """Instance-level cross-space constraint L_icc (Eq. 9-10).

    For each anchor G_t^i the positive is the *farthest* feature of the same image at another
    stage (G_s^i, s != t), the negative the *closest* feature of a different image (G_s^j,
    j != i, any stage, whatever its vehicle ID).

    Args:
        feats (Tensor): (T, B, L), T >= 2.
        margin (float): beta_I (0.15).
        gather (bool): gather every DDP rank's features first (``DIST.GATHER_LOSSES``).

    Returns:
        Tensor: scalar, mean over anchors of ``relu(d_ap - d_an + beta_I)``.
    """
    feats, _ = gather_for_loss(feats, None, dim=1, enabled=gather)  # image i of rank r -> r B/N + i
    z, t, b = _flatten(feats)
    img = torch.arange(b, device=z.device).repeat(t)
    dist = pairwise_euclidean(z, z)
    same_img = img[:, None] == img[None, :]
    eye = torch.eye(t * b, dtype=torch.bool, device=z.device)
    return _hard_triplet(dist, same_img & ~eye, ~same_img, margin)


def dcc_loss(feats: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Diversity cross-space constraint L_dcc per image (Eq. 11).

    ``L_dcc^i = || Ĝ^i Ĝ^i^T - I_T ||_F`` where Ĝ^i in R^{T x L} stacks image i's T unified
    features as rows, each **L2-normalised** (so the diagonal of the Gram matrix is 1 and the
    loss only penalises the cosine similarity between different stages' features). With
    ``normalize=False``, Eq. 11 as written: the rows are the raw G_t^i (so the loss also pulls
    every ||G_t^i|| to 1).

    Args:
        feats (Tensor): (T, B, L).
        normalize (bool): L2-normalise the rows first (our default, see the SVRN README).

    Returns:
        Tensor: (B,) per-image losses (the model averages them over the batch, Eq. 12).
    """
    if feats.dim() != 3:
        raise ValueError(f"feats must be (T, B, L), got {tuple(feats.shape)}")
    g = feats.float()
    g = (F.normalize(g, dim=2) if normalize else g).transpose(0, 1)   # (B, T, L)
    gram = g @ g.transpose(1, 2)                                       # (B, T, T)
    eye = torch.eye(g.shape[1], device=g.device, dtype=g.dtype)
    diff = (gram - eye).flatten(1)
    # sqrt with a floor: differentiable when the stages are already orthogonal
    return (diff.pow(2).sum(dim=1) + 1e-12).sqrt()
