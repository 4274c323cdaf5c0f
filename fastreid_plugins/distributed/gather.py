"""A gradient-carrying all-gather for the cross-rank losses (pure: no state, no FastReID).

Pair-based losses (batch-hard triplet, SupCon, SVRN's VCC / ICC) compare every image of a batch
with every other. Under DDP each rank holds ``IMS_PER_BATCH / world_size`` images, so without a
gather the loss of N processes is not the loss of one process over the whole batch (FastReID
1.4.0's triplet gather is commented out). :func:`gather_for_loss` gathers the embeddings with
their gradient and the labels without; the losses take it as an explicit ``gather`` argument
(``DIST.GATHER_LOSSES``), so N processes x B/N images optimise the loss of one process x B images
(same value on every rank, same gradient after DDP's averaging).
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
import torch.distributed as dist

__all__ = ["is_multi_rank", "all_gather_with_grad", "gather_for_loss"]


def is_multi_rank() -> bool:
    """True when a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllGather(torch.autograd.Function):
    """``all_gather`` whose backward all-reduces (sums) the gradient and returns this rank's slice.

    Every rank computes the same loss L over the gathered batch; this rank's slice x_r then receives
    sum_s dL_s/dx_r = W dL/dx_r, and DDP's gradient averaging divides by W: the parameters get
    dL/dtheta, the gradient of one process over the whole batch. Unlike
    ``torch.distributed.nn.functional.all_gather`` (reduce-scatter on NCCL, all-to-all elsewhere,
    equal sizes only), ranks may hold different sizes and the backward is one all-reduce of the
    full gradient, which every backend has (the tensors here are a batch of embeddings).
    """

    @staticmethod
    def forward(ctx, x, dim, sizes):
        ctx.dim, ctx.sizes, ctx.rank = dim, sizes, dist.get_rank()
        parts = []
        for n in sizes:
            shape = list(x.shape)
            shape[dim] = n
            parts.append(torch.empty(shape, dtype=x.dtype, device=x.device))
        if len(set(sizes)) == 1:
            dist.all_gather(parts, x.contiguous())
        else:  # gloo's all_gather needs equal sizes: pad to the largest
            big = max(sizes)
            pad = list(x.shape)
            pad[dim] = big - x.shape[dim]
            xp = torch.cat([x, x.new_zeros(pad)], dim=dim).contiguous()
            full = [torch.empty_like(xp) for _ in sizes]
            dist.all_gather(full, xp)
            parts = [f.narrow(dim, 0, n) for f, n in zip(full, sizes)]
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[:ctx.rank])
        return grad.narrow(ctx.dim, start, ctx.sizes[ctx.rank]), None, None


def _sizes(n: int, device: torch.device) -> List[int]:
    t = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [int(v) for v in out]


def all_gather_with_grad(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """Concatenate ``x`` from every rank along ``dim`` (rank order), keeping the autograd graph.

    The backward gives this rank's slice the gradient summed over every rank's copy of the loss
    (see :class:`_AllGather`), which together with DDP's averaging is the single-process gradient.
    Ranks may hold different sizes along ``dim``; the other dimensions must agree.

    Args:
        x (Tensor): this rank's part, e.g. (B/N, D) embeddings.
        dim (int): the batch dimension.

    Returns:
        Tensor: (B, D) (with the default ``dim``); ``x`` itself without a multi-rank process group.
    """
    if not is_multi_rank():
        return x
    dim = dim % x.dim()
    return _AllGather.apply(x, dim, _sizes(x.shape[dim], x.device))


def _all_gather_nograd(x: torch.Tensor, dim: int = 0) -> torch.Tensor:
    sizes = _sizes(x.shape[dim], x.device)
    with torch.no_grad():
        return _AllGather.apply(x.detach(), dim % x.dim(), sizes)


def gather_for_loss(features: torch.Tensor, targets: Optional[torch.Tensor] = None,
                    dim: int = 0, enabled: bool = True
                    ) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """The cross-rank losses' gather: ``features`` with gradient, ``targets`` without.

    A no-op (inputs returned as they are) when ``enabled`` is False (``DIST.GATHER_LOSSES``, which
    the meta-architectures pass to their losses as ``gather``) or no multi-rank process group
    runs, so single-process training is unchanged.

    Args:
        features: this rank's features, batch along ``dim`` ((B/N, D) or SVRN's (T, B/N, L)).
        targets: (B/N,) labels, or None.
        dim: the batch dimension of ``features``.
        enabled: whether to gather at all.

    Returns:
        The whole batch's features and labels, in rank order.
    """
    if not (enabled and is_multi_rank()):
        return features, targets
    features = all_gather_with_grad(features, dim)
    if targets is not None:
        targets = _all_gather_nograd(targets.to(features.device), 0)
    return features, targets
