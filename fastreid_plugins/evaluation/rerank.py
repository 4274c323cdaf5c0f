"""k-reciprocal re-ranking for the evaluator (Zhong et al., "Re-ranking Person Re-identification
with k-reciprocal Encoding", CVPR 2017, Eq. 12), with FastReID's ``TEST.RERANK`` K1/K2/LAMBDA
semantics.

``TEST.RERANK.TYPE`` picks the implementation of the Jaccard term:

* ``"sparse"`` (default): :func:`fastreid_plugins.evaluation.sparse_rerank.sparse_rerank`, the same
  distances as FastReID's (within float32 rounding) from sparse neighbour sets, memory O(k n):
  no N x N matrix for N = query + gallery.
* ``"fastreid"``: FastReID's ``build_dist(..., metric="jaccard")`` (three dense N x N float32
  matrices; on the CPU through ``fastreid_plugins.patches.evaluation``).
"""

import logging

import numpy as np
import torch.nn.functional as F
from fastreid.utils import comm
from fastreid.utils.compute_dist import build_dist

from .sparse_rerank import sparse_rerank

__all__ = ["rerank_distance", "RERANK_TYPES"]

logger = logging.getLogger(__name__)

RERANK_TYPES = ("sparse", "fastreid")


def rerank_distance(cfg, qf, gf, dist):
    """Blend the Jaccard distance of k-reciprocal sets with the original distance.

    Reference:
        Zhong et al. CVPR 2017, Eq. 12: ``d* = (1 - lambda) d_J + lambda d``.

    Args:
        cfg (CfgNode): uses ``TEST.RERANK.{K1,K2,LAMBDA}``, ``TEST.RERANK.TYPE`` (``"sparse"`` if
            the key is absent) and ``TEST.METRIC`` (cosine: the Jaccard term uses L2-normalised
            features, as in FastReID).
        qf (torch.Tensor): (Q, D) query features; gf (torch.Tensor): (G, D) gallery features.
        dist (np.ndarray): (Q, G) original distances.

    Returns:
        np.ndarray: (Q, G) ``(1 - LAMBDA) * jaccard + LAMBDA * dist``.

    Raises:
        ValueError: ``TEST.RERANK.TYPE`` is not one of :data:`RERANK_TYPES`, or K1/K2/LAMBDA are
            out of range.
    """
    rr = cfg.TEST.RERANK
    k1, k2, lam = rr.K1, rr.K2, rr.LAMBDA
    kind = str(rr.get("TYPE", "sparse")).lower()
    if kind not in RERANK_TYPES:
        raise ValueError(f"TEST.RERANK.TYPE must be one of {RERANK_TYPES}, got {rr.get('TYPE')!r}")
    cosine = cfg.TEST.METRIC == "cosine"
    logger.info(f"Re-ranking ({kind}): k1={k1}, k2={k2}, lambda={lam}, "
                f"{len(qf)} query x {len(gf)} gallery")
    if kind == "sparse":
        return sparse_rerank(qf, gf, dist, k1=k1, k2=k2, lambda_value=lam, normalize=cosine,
                             progress=comm.is_main_process())
    if cosine:
        qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
    jaccard = build_dist(qf, gf, metric="jaccard", k1=k1, k2=k2)
    return jaccard * (1 - lam) + np.asarray(dist) * lam
