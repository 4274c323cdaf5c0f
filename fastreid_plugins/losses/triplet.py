"""FastReID's triplet loss over the whole multi-process batch.

FastReID 1.4.0's ``triplet_loss`` has its cross-rank gather commented out: under DDP each rank
mines its hardest positive and negative among its own ``IMS_PER_BATCH / world_size`` images
(with 8 GPUs and a 64-image batch of 4 images per identity, among 2 identities). This wrapper
gathers the embeddings (with gradient) and labels of every rank first
(:func:`fastreid_plugins.distributed.gather.gather_for_loss`), so every rank computes the loss
of the whole batch, exactly what one process with the whole batch computes. Single-process
training and ``gather=False`` (``DIST.GATHER_LOSSES False``) call FastReID's function unchanged.
"""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import torch
from fastreid.modeling.losses import triplet_loss as _fastreid_triplet_loss

from ..distributed.gather import gather_for_loss

__all__ = ["triplet_loss"]


def triplet_loss(embedding: torch.Tensor, targets: torch.Tensor, margin: float, norm_feat: bool,
                 hard_mining: bool, gather: bool = True) -> torch.Tensor:
    """Batch-hard (or weighted) triplet loss over the embeddings of every rank.

    Reference:
        Hermans, Beyer, Leibe. "In Defense of the Triplet Loss for Person Re-Identification",
        arXiv 1703.07737, Eq. 5 (batch hard); FastReID's ``fastreid.modeling.losses.triplet_loss``
        computes it.

    Args:
        embedding (Tensor): (B/N, D) this rank's embeddings (N ranks; N = 1 without DDP).
        targets (Tensor): (B/N,) identity labels.
        margin (float): triplet margin (soft margin when 0).
        norm_feat (bool): cosine instead of Euclidean distance.
        hard_mining (bool): batch-hard mining (else FastReID's softmax-weighted mining).
        gather (bool): gather every rank's embeddings first (``DIST.GATHER_LOSSES``).

    Returns:
        Tensor: scalar, the loss of the whole (B, D) batch, identical on every rank.
    """
    embedding, targets = gather_for_loss(embedding, targets, enabled=gather)
    return _fastreid_triplet_loss(embedding, targets, margin, norm_feat, hard_mining)
