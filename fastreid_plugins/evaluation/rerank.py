"""k-reciprocal re-ranking for the evaluator (Zhong et al., "Re-ranking Person Re-identification
with k-reciprocal Encoding", CVPR 2017, Eq. 12), with FastReID's ``TEST.RERANK`` K1/K2/LAMBDA
semantics.

``TEST.RERANK.TYPE`` picks the implementation of the Jaccard term (:func:`rerank_type`):

* ``"sparse"`` (default): the same distances as FastReID's (within float32 rounding) from sparse
  neighbour sets, memory O(k n): no N x N matrix for N = query + gallery. The evaluator computes
  them query block by query block
  (:func:`fastreid_plugins.evaluation.chunked.evaluate_chunked` through
  :class:`~fastreid_plugins.evaluation.sparse_rerank.JaccardIndex`, never a (Q, G) matrix, with
  the k-NN of ``TEST.RERANK.KNN``); :func:`~fastreid_plugins.evaluation.sparse_rerank.
  sparse_rerank` gives the whole (Q, G) matrix for callers that want one.
* ``"fastreid"``: FastReID's ``build_dist(..., metric="jaccard")`` (three dense N x N float32
  matrices; on the CPU through ``fastreid_plugins.patches.evaluation``): :func:`rerank_distance`.
"""

from __future__ import annotations

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import logging
from typing import TYPE_CHECKING

import numpy as np
import torch.nn.functional as F
from fastreid.utils.compute_dist import build_dist

from ..config import require_plugins_config
from ..errors import ConfigError

if TYPE_CHECKING:
    import torch
    from fastreid.config import CfgNode

__all__ = ["rerank_distance", "rerank_type", "RERANK_TYPES"]

logger = logging.getLogger(__name__)

RERANK_TYPES = ("sparse", "fastreid")


def rerank_type(cfg: CfgNode) -> str:
    """``TEST.RERANK.TYPE``, lower-cased and checked.

    Args:
        cfg (CfgNode): a config with ``TEST.RERANK``.

    Returns:
        str: one of :data:`RERANK_TYPES`.

    Raises:
        ConfigError (a ``ValueError``): ``TEST.RERANK.TYPE`` is not one of
            :data:`RERANK_TYPES`; or the config was built without ``add_plugins_config``.
    """
    require_plugins_config(cfg, "TEST.RERANK.TYPE")
    kind = str(cfg.TEST.RERANK.TYPE).lower()
    if kind not in RERANK_TYPES:
        raise ConfigError(f"TEST.RERANK.TYPE must be one of {RERANK_TYPES}, "
                          f"got {cfg.TEST.RERANK.TYPE!r}")
    return kind


def rerank_distance(cfg: CfgNode, qf: torch.Tensor, gf: torch.Tensor,
                    dist: np.ndarray) -> np.ndarray:
    """FastReID's dense re-ranking (``TEST.RERANK.TYPE fastreid``): Jaccard blended with ``dist``.

    Reference:
        Zhong et al. CVPR 2017, Eq. 12: ``d* = (1 - lambda) d_J + lambda d``, ``d_J`` from
        FastReID 1.4.0's ``build_dist(qf, gf, metric="jaccard", k1, k2)``.

    Args:
        cfg (CfgNode): uses ``TEST.RERANK.{K1,K2,LAMBDA,TYPE}`` and ``TEST.METRIC`` (cosine: the
            Jaccard term uses L2-normalised features, as in FastReID).
        qf (torch.Tensor): (Q, D) query features; gf (torch.Tensor): (G, D) gallery features.
        dist (np.ndarray): (Q, G) original distances.

    Returns:
        np.ndarray: (Q, G) ``(1 - LAMBDA) * jaccard + LAMBDA * dist``.

    Raises:
        ValueError: ``TEST.RERANK.TYPE`` is not ``fastreid`` (the ``sparse`` type is evaluated
            query-chunked; :func:`~fastreid_plugins.evaluation.sparse_rerank.sparse_rerank`
            gives its (Q, G) matrix).
    """
    rr = cfg.TEST.RERANK
    k1, k2, lam = rr.K1, rr.K2, rr.LAMBDA
    kind = rerank_type(cfg)
    if kind != "fastreid":
        raise ValueError(f"rerank_distance is FastReID's dense re-ranking (TEST.RERANK.TYPE "
                         f"fastreid), got TEST.RERANK.TYPE {kind!r}: the sparse re-ranking runs "
                         f"in evaluate_chunked, or call sparse_rerank for a (Q, G) matrix")
    logger.info(f"Re-ranking ({kind}): k1={k1}, k2={k2}, lambda={lam}, "
                f"{len(qf)} query x {len(gf)} gallery")
    if cfg.TEST.METRIC == "cosine":
        qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
    jaccard = build_dist(qf, gf, metric="jaccard", k1=k1, k2=k2)
    return jaccard * (1 - lam) + np.asarray(dist) * lam
