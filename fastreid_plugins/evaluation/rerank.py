"""k-reciprocal re-ranking for the evaluator (Zhong et al., "Re-ranking Person Re-identification
with k-reciprocal Encoding", CVPR 2017), with FastReID's ``TEST.RERANK`` K1/K2/LAMBDA semantics."""

import torch.nn.functional as F
from fastreid.utils.compute_dist import build_dist

__all__ = ["rerank_distance"]


def rerank_distance(cfg, qf, gf, dist):
    """Blend the Jaccard distance of k-reciprocal sets with the original distance.

    Args:
        cfg (CfgNode): uses ``TEST.RERANK.{K1,K2,LAMBDA}`` and ``TEST.METRIC``.
        qf (torch.Tensor): (Q, D) query features; gf (torch.Tensor): (G, D) gallery features.
        dist (np.ndarray): (Q, G) original distances.

    Returns:
        np.ndarray: (Q, G) ``(1 - LAMBDA) * jaccard + LAMBDA * dist``.
    """
    k1, k2, lam = cfg.TEST.RERANK.K1, cfg.TEST.RERANK.K2, cfg.TEST.RERANK.LAMBDA
    if cfg.TEST.METRIC == "cosine":
        qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
    jaccard = build_dist(qf, gf, metric="jaccard", k1=k1, k2=k2)
    return jaccard * (1 - lam) + dist * lam
