"""Query-chunked re-id evaluation: CMC, mAP, mINP (and top-k rank lists) without a (Q, G) array.

FastReID's evaluator (and the full-matrix path of :class:`VehicleReidEvaluator` before this module)
builds the whole (Q, G) distance matrix, optionally a second one for k-reciprocal re-ranking, and
ranks it: 5.1 GB per matrix at VERI-Wild Large size (10,000 query x 128,517 gallery), 12.7 GB peak
with re-ranking; FastReID's evaluation is killed on a 64 GB machine for MSMT17 (fast-reid issue
#404). Here queries are processed in blocks whose row count follows a memory budget
(``TEST.EVAL_MEMORY_GB``): for each block, its distances (after AQE when enabled), its re-ranked
distances (the sparse re-ranker computes Jaccard rows per query block from its O(k n) encoding,
Zhong et al. CVPR 2017 Eq. 10-12), and its per-query first-match rank, AP and INP
(:func:`fastreid_plugins.evaluation.rank.rank_block`: the same junk rule and tie rule as the
full-matrix :func:`~fastreid_plugins.evaluation.rank.evaluate_rank`). The CMC comes from the
accumulated first-match ranks, so the metrics equal the full-matrix path's.

Reference:
    - Metrics: Zheng et al. ICCV 2015 (CMC / mAP, junk rule); Ye et al. TPAMI 2021, Eq. 7 (mINP).
    - AQE: FastReID's ``fastreid.evaluation.query_expansion.aqe`` (Chum et al. ICCV 2007, "Total
      Recall"), computed in row blocks of the (N, N) similarity matrix.
    - Re-ranking: Zhong et al. CVPR 2017, Eq. 12, through
      :class:`fastreid_plugins.evaluation.sparse_rerank.JaccardIndex`.

The cosine distance is ``1 - (q . g) / (|q| |g|)`` from the features and their inverse norms
(FastReID normalises copies first; the two differ by float32 rounding only).

Memory: besides the caller's features, the block working set (at most ``BYTES_PER_ENTRY`` bytes
per (query, gallery) pair of a block, which the budget bounds); when re-ranking, the stacked
(normalised) query + gallery copy while the re-ranker builds its k-NN table and encoding (freed
before the blocks) and its sparse structures (O(k n)); with AQE, the expanded features (one more
copy of the features).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from ..config import PLUGIN_DEFAULTS, require_plugins_config
from .knn import _progress, knn_from_cfg, row_norms, row_sq_norms
from .rank import check_labels, curves_from_ranks, rank_block

if TYPE_CHECKING:
    from fastreid.config import CfgNode
    from numpy.typing import ArrayLike

__all__ = ["evaluate_chunked", "chunk_rows", "chunked_aqe", "DEFAULT_MEMORY_GB",
           "BYTES_PER_ENTRY", "block_distance_fn"]

DEFAULT_MEMORY_GB = PLUGIN_DEFAULTS["TEST.EVAL_MEMORY_GB"]
# bytes per (query, gallery) entry of a block: float32 distances (4) and re-ranked distances (4),
# rank_block's temporaries (sorted negatives 4 + masked copy 4 + masked positives 4 + masks 3),
# the top-k masked copy (4) and headroom for the re-ranker's float64 sub-blocks
BYTES_PER_ENTRY = 40
_RANK_ROWS = 64  # rows ranked together inside a block
_COUNT_ENTRIES = 1 << 21  # pairs binned together by the verification histograms


def chunk_rows(num_gallery: int, memory_gb: float = DEFAULT_MEMORY_GB,
               bytes_per_entry: int = BYTES_PER_ENTRY) -> int:
    """Queries per block so that the block working set stays within ``memory_gb`` GiB.

    Args:
        num_gallery (int): G, the length of one distance row.
        memory_gb (float): budget (GiB) of the block working set (``TEST.EVAL_MEMORY_GB``).
        bytes_per_entry (int): working-set bytes per (query, gallery) entry.

    Returns:
        int: block size >= 1 (a budget below one row still processes one query at a time).

    Raises:
        ValueError: ``memory_gb`` is not a positive number.
    """
    try:
        ok = float(memory_gb) > 0 and math.isfinite(float(memory_gb))
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ValueError(f"TEST.EVAL_MEMORY_GB must be a positive number of GiB, got {memory_gb!r}")
    return max(1, int(float(memory_gb) * 2**30 // (bytes_per_entry * max(int(num_gallery), 1))))


@torch.no_grad()
def chunked_aqe(query_feat: torch.Tensor, gallery_feat: torch.Tensor, qe_times: int = 1,
                qe_k: int = 10, alpha: float = 3.0, memory_gb: Optional[float] = None,
                progress: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """FastReID's average query expansion, computed in row blocks (no (N, N) similarity matrix).

    Reference:
        ``fastreid.evaluation.query_expansion.aqe`` (alpha-weighted query expansion, Radenovic et
        al. TPAMI 2018; Chum et al. ICCV 2007): every feature of query + gallery is replaced by the
        mean of its ``qe_k`` most cosine-similar features (itself included) weighted by
        ``similarity ** alpha``, ``qe_times`` times.

    Args:
        query_feat (torch.Tensor): (Q, D); gallery_feat (torch.Tensor): (G, D).
        qe_times, qe_k (int), alpha (float): ``TEST.AQE.QE_TIME`` / ``QE_K`` / ``ALPHA``.
        memory_gb (float): budget of a block of the similarity matrix (default
            :data:`DEFAULT_MEMORY_GB`).
        progress (bool): tqdm bar.

    Returns:
        tuple: ``(query_feat, gallery_feat)`` float32 (Q, D) and (G, D) expanded features.
        Equal to FastReID's up to float32 rounding (the cosine similarity is the dot product
        scaled by the inverse norms instead of a product of normalised copies).

    Raises:
        ValueError: ``qe_k`` is not in [1, Q + G].
    """
    nq = query_feat.shape[0]
    feat = torch.cat([query_feat.float().cpu(), gallery_feat.float().cpu()])
    n = feat.shape[0]
    if not 1 <= int(qe_k) <= n:
        raise ValueError(f"TEST.AQE.QE_K must be in [1, {n}] (query + gallery), got {qe_k}")
    rows = chunk_rows(n, memory_gb or DEFAULT_MEMORY_GB,
                      bytes_per_entry=4 + (4 * qe_k * feat.shape[1]) // max(n, 1) + 1)
    for _ in range(int(qe_times)):
        inv = 1.0 / row_norms(feat)[:, 0].clamp_min(1e-12)  # F.normalize's eps
        new = torch.empty_like(feat)
        for s in _progress(range(0, n, rows), progress, "AQE"):
            e = min(n, s + rows)
            sims = torch.mm(feat[s:e], feat.t())
            sims.mul_(inv[s:e, None]).mul_(inv[None, :])
            w, idx = sims.topk(qe_k, dim=1, largest=True, sorted=True)
            del sims
            w = w.pow(alpha)
            new[s:e] = (feat[idx] * w[..., None]).mean(1)
        feat = new
    return feat[:nq], feat[nq:]


def _topk_rows(d, q_pids, g_pids, q_camids, g_camids, k):
    """Top-``k`` gallery indices / distances per row, junk removed, ties by gallery index."""
    b, g = d.shape
    k = min(k, g)
    idx = np.full((b, k), -1, dtype=np.int64)
    val = np.full((b, k), np.nan, dtype=np.float32)
    junk = (g_pids[None, :] == q_pids[:, None]) & (g_camids[None, :] == q_camids[:, None])
    masked = np.where(junk, np.inf, d)
    kth = np.partition(masked, k - 1, axis=1)[:, k - 1]
    for r in range(b):
        cand = np.flatnonzero(masked[r] <= kth[r])
        cand = cand[np.lexsort((cand, masked[r, cand]))][:k]  # = stable argsort's first k
        cand = cand[np.isfinite(masked[r, cand])]
        idx[r, :len(cand)] = cand
        val[r, :len(cand)] = d[r, cand]
    return idx, val


@torch.no_grad()
def evaluate_chunked(query_feat: Union[torch.Tensor, np.ndarray],
                     gallery_feat: Union[torch.Tensor, np.ndarray], q_pids: ArrayLike,
                     g_pids: ArrayLike, q_camids: ArrayLike, g_camids: ArrayLike,
                     metric: str = "cosine", aqe: Optional[Dict[str, Any]] = None,
                     rerank: Optional[Dict[str, Any]] = None,
                     memory_gb: float = DEFAULT_MEMORY_GB, max_rank: int = 50, topk: int = 0,
                     progress: bool = False,
                     verification: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """CMC, per-query AP / INP (and top-k lists) from features, one block of queries at a time.

    Same metrics as ``evaluate_rank(build_dist(qf, gf, metric), ...)`` after FastReID's AQE and
    the evaluator's re-ranking (Zhong et al. CVPR 2017, Eq. 12), without any (Q, G) array.

    Args:
        query_feat (torch.Tensor): (Q, D); gallery_feat (torch.Tensor): (G, D) features.
        q_pids, q_camids (array-like): (Q,); g_pids, g_camids (array-like): (G,) labels.
        metric (str): ``"cosine"`` or ``"euclidean"`` (FastReID's ``TEST.METRIC``).
        aqe (dict or None): ``qe_times``, ``qe_k``, ``alpha`` of :func:`chunked_aqe`.
        rerank (dict or None): ``k1``, ``k2``, ``lambda_value`` and optional ``knn`` /
            ``knn_params`` / ``device`` of :class:`~.sparse_rerank.JaccardIndex`.
        memory_gb (float): budget (GiB) of a block's working set (:func:`chunk_rows`).
        max_rank (int): CMC length (capped at G).
        topk (int): also return the ``topk`` nearest non-junk gallery images of every query.
        progress (bool): tqdm bars.
        verification (dict or None): also count the positive / negative pair distances
            (:mod:`~.verification`) with ``n_bins``, ``exact_pairs`` (keep the distances when
            ``Q G`` is at most this) and ``both_metrics`` (also the other of cosine / euclidean).

    Returns:
        dict: ``cmc`` (float32 (min(max_rank, G),)), ``all_ap`` / ``all_inp`` (lists over the
        queries with a true match, as :func:`~.rank.evaluate_rank`), ``valid`` ((Q,) bool),
        ``ap`` / ``inp`` ((Q,) float64, NaN where not valid), ``chunk`` (queries per block) and,
        when ``topk``: ``topk_index`` ((Q, topk) int64, -1 padded) and ``topk_dist`` ((Q, topk)
        float32), in ascending distance, ties by gallery index, junk excluded; with
        ``verification``: ``verification``, a dict of
        :class:`~.verification.PairHistogram` by distance (``metric``, the other metric with
        ``both_metrics``, ``<metric>+rerank`` when re-ranking).

    Raises:
        ValueError: bad shapes or metric, bad budget, or no query has a true match.
    """
    if metric not in ("cosine", "euclidean"):
        raise ValueError(f"TEST.METRIC must be 'cosine' or 'euclidean' for the chunked "
                         f"evaluation, got {metric!r}")
    qf = torch.as_tensor(query_feat).detach().float().cpu()
    gf = torch.as_tensor(gallery_feat).detach().float().cpu()
    if qf.dim() != 2 or gf.dim() != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"features must be (Q, D) and (G, D), got {tuple(qf.shape)} and "
                         f"{tuple(gf.shape)}")
    nq, ng = qf.shape[0], gf.shape[0]
    q_pids, g_pids, q_camids, g_camids = check_labels(nq, ng, q_pids, g_pids, q_camids, g_camids,
                                                      "{} query features", "{} gallery features")
    rows = chunk_rows(ng, memory_gb)
    if aqe:
        qf, gf = chunked_aqe(qf, gf, aqe["qe_times"], aqe["qe_k"], aqe["alpha"], memory_gb,
                             progress)
    index = _rerank_index(qf, gf, metric, rerank, progress) if rerank else None
    lam = float(rerank["lambda_value"]) if rerank else 0.0
    hists, other = None, None
    if verification:
        hists, other = _verification_histograms(verification, metric, qf, gf, index is not None)
    block_distance = block_distance_fn(qf, gf, {metric, other} - {None})

    first = np.zeros(nq, dtype=np.int64)
    ap = np.full(nq, np.nan)
    inp = np.full(nq, np.nan)
    if topk:
        topk_index = np.full((nq, min(topk, ng)), -1, dtype=np.int64)
        topk_dist = np.full((nq, min(topk, ng)), np.nan, dtype=np.float32)
    for s in _progress(range(0, nq, rows), progress, "evaluation (query blocks)"):
        e = min(nq, s + rows)
        d = block_distance(metric, s, e)
        labels = (q_pids, g_pids, q_camids, g_camids)
        ranked = []  # the histograms of the ranked distances: counted by rank_block
        if hists is not None:
            if other:
                _count_pairs(hists[other], block_distance(other, s, e), s, *labels)
            if index is None:
                ranked = [hists[metric]]
            else:
                _count_pairs(hists[metric], d, s, *labels)
                ranked = [hists[f"{metric}+rerank"]]
        if index is not None:  # Eq. 12, the arithmetic of sparse_rerank
            blk = index.rows(s, e)
            blk *= np.float32(1 - lam)
            blk += d * np.float32(lam)
            d = blk
        for r in range(s, e, _RANK_ROWS):  # cache-sized row groups (as evaluate_rank's chunk)
            f = min(e, r + _RANK_ROWS)
            first[r:f], ap[r:f], inp[r:f] = rank_block(d[r - s:f - s], q_pids[r:f], g_pids,
                                                       q_camids[r:f], g_camids, ranked)
        if topk:
            topk_index[s:e], topk_dist[s:e] = _topk_rows(d, q_pids[s:e], g_pids, q_camids[s:e],
                                                         g_camids, topk)
        del d
    cmc, all_ap, all_inp = curves_from_ranks(first, ap, inp, min(max_rank, ng))
    out = {"cmc": cmc, "all_ap": all_ap, "all_inp": all_inp, "valid": first > 0, "ap": ap,
           "inp": inp, "chunk": rows}
    if topk:
        out["topk_index"], out["topk_dist"] = topk_index, topk_dist
    if hists is not None:
        out["verification"] = hists
    return out


def _rerank_index(qf, gf, metric, rerank, progress):
    """The sparse re-ranker's :class:`~.sparse_rerank.JaccardIndex` of the stacked features."""
    from .sparse_rerank import JaccardIndex, _check_args

    nq, ng = len(qf), len(gf)
    _check_args(nq + ng, rerank["k1"], rerank["k2"], float(rerank["lambda_value"]))
    feats = torch.cat([qf, gf])  # the re-ranker's stacked copy, freed once encoded
    if metric == "cosine":  # same arithmetic as F.normalize(x, dim=1), in place
        feats /= row_norms(feats).clamp_min_(1e-12)
    return JaccardIndex(feats, nq, rerank["k1"], rerank["k2"], knn=rerank.get("knn", "auto"),
                        device=rerank.get("device"), progress=progress,
                        knn_params=rerank.get("knn_params"))


def block_distance_fn(qf: torch.Tensor, gf: torch.Tensor,
                      metrics: Sequence[str]) -> Callable[[str, int, int], np.ndarray]:
    """``f(metric, s, e)``: the (e - s, G) float32 distances of query rows ``s..e`` for each of
    ``metrics`` (cosine ``1 - cos`` from inverse norms: no normalised copy of the gallery;
    squared euclidean as FastReID's ``compute_euclidean_distance``): the evaluator's distances,
    block by block (also :mod:`fastreid_plugins.tools.calibrate`'s pairs).

    Args:
        qf (torch.Tensor): (Q, D) float32 query features; gf (torch.Tensor): (G, D) gallery.
        metrics: the metrics ``f`` will be asked for (``"cosine"``, ``"euclidean"``).
    """
    if "cosine" in metrics:
        q_inv = 1.0 / row_norms(qf)[:, 0].clamp_min(1e-12)  # F.normalize's eps
        g_inv = 1.0 / row_norms(gf)[:, 0].clamp_min(1e-12)
    if "euclidean" in metrics:
        q_sq, g_sq = row_sq_norms(qf), row_sq_norms(gf)
    gt = gf.t()

    def block_distance(m, s, e):
        if m == "cosine":
            d = torch.mm(qf[s:e], gt).mul_(q_inv[s:e, None]).mul_(g_inv[None, :])
            return d.neg_().add_(1).numpy()
        d = q_sq[s:e, None] + g_sq[None, :]
        return d.addmm_(qf[s:e], gt, beta=1, alpha=-2).numpy()

    return block_distance


def _verification_histograms(opts, metric, qf, gf, rerank):
    """The :class:`~.verification.PairHistogram` of each distance and the other metric (or
    None) for :func:`evaluate_chunked`'s ``verification`` options."""
    from .verification import DEFAULT_BINS, DEFAULT_EXACT_PAIRS, histograms_for

    other = None
    if opts.get("both_metrics"):
        other = "euclidean" if metric == "cosine" else "cosine"
    metrics = [metric] + ([other] if other else [])
    norms = {"q": float(row_norms(qf).max()) if len(qf) else 0.0,
             "g": float(row_norms(gf).max()) if len(gf) else 0.0}
    if opts.get("norm_max") is not None:  # a range shared by several splits (VehicleID)
        norms = {"q": float(opts["norm_max"]), "g": float(opts["norm_max"])}
    exact = len(qf) * len(gf) <= int(opts.get("exact_pairs", DEFAULT_EXACT_PAIRS))
    return histograms_for(metrics, rerank, int(opts.get("n_bins", DEFAULT_BINS)), exact,
                          norms), other


def _count_pairs(hist, d, s, q_pids, g_pids, q_camids, g_camids):
    """Add the pairs of block rows ``s..s+len(d)`` to ``hist``, in row groups of at most
    ``_COUNT_ENTRIES`` pairs (their scaled distances, bin indices and identity mask, ~9 bytes
    a pair, are the only temporaries: ~18 MiB, whatever G)."""
    step = max(1, _COUNT_ENTRIES // max(1, d.shape[1]))
    for r in range(0, len(d), step):
        f = min(len(d), r + step)
        hist.add(d[r:f], q_pids[s + r:s + f], g_pids, q_camids[s + r:s + f], g_camids)


def options_from_cfg(cfg: CfgNode) -> Dict[str, Any]:
    """Keyword arguments of :func:`evaluate_chunked` from FastReID's ``TEST`` keys.

    Uses ``TEST.METRIC``, ``TEST.AQE.{ENABLED,QE_TIME,QE_K,ALPHA}``,
    ``TEST.RERANK.{ENABLED,K1,K2,LAMBDA}``, and the keys :func:`fastreid_plugins.config.
    add_plugins_config` adds: ``TEST.EVAL_MEMORY_GB`` and the k-NN keys ``TEST.RERANK.KNN*``
    (read by :func:`fastreid_plugins.evaluation.knn.knn_from_cfg`).

    Raises:
        ConfigError (a ``ValueError``): ``TEST.RERANK.KNN`` is not one of ``exact``, ``ivf``,
            ``hnsw``; or the config was built without ``add_plugins_config``.
    """
    require_plugins_config(cfg, "the query-chunked evaluation")
    t = cfg.TEST
    opts = {"metric": t.METRIC, "memory_gb": t.EVAL_MEMORY_GB,
            "aqe": None, "rerank": None}
    if t.AQE.ENABLED:
        opts["aqe"] = {"qe_times": t.AQE.QE_TIME, "qe_k": t.AQE.QE_K, "alpha": t.AQE.ALPHA}
    if t.RERANK.ENABLED:
        rr = t.RERANK
        knn, params = knn_from_cfg(cfg)
        opts["rerank"] = {"k1": rr.K1, "k2": rr.K2, "lambda_value": rr.LAMBDA, "knn": knn,
                          "knn_params": params}
    if t.VERIFICATION.ENABLED:
        v = t.VERIFICATION
        opts["verification"] = {"n_bins": v.BINS, "exact_pairs": v.EXACT_PAIRS,
                                "both_metrics": v.BOTH_METRICS}
    return opts
