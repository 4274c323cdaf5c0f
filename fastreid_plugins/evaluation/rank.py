"""CMC, mAP and mINP for re-identification, without argsorting the gallery.

Reference:
    - CMC / mAP with the Market-1501 junk rule: Zheng et al., "Scalable Person Re-identification:
      A Benchmark", ICCV 2015; the same rule as FastReID's ``evaluate_rank``.
    - mINP: Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook",
      TPAMI 2021, Eq. 7: ``INP_i = |G_i| / R_i^hard`` with ``R_i^hard`` the rank of the hardest
      (last) true match.
    - MFG-Net (Xu et al.), Eq. 4-6, uses the same three metrics.

For each query, gallery images that share both its pid and its camid are junk and removed; the
remaining gallery images with the query's pid are its true matches. A query without any true match
is skipped (as in FastReID). With ``n`` true matches at 1-based ranks ``r_1 < ... < r_n`` among
the kept gallery images::

    AP    = mean_k ( k / r_k )
    INP   = n / r_n
    CMC@m = 1 if r_1 <= m else 0

FastReID (Cython or Python) argsorts every row of the (Q, G) distance matrix. Only the ranks of the
true matches are needed, and ``r_k = k + #(negatives with distance <= d_k)``: each block of queries
sorts the *values* of its negatives (other pids' distances, a SIMD value sort, several times faster
than an argsort) and binary-searches its few true-match distances in them.
The same-identity entries of a block (true matches and junk, a few per row) are found once as
index lists, so the only (b, G) work is one comparison of the identities, one copy of the rows and
the value sort: ~0.2x FastReID's Cython ranker at VeRi-776 size (``bench/eval_speed.py``).
A negative tied with a true match is counted before it (a conservative choice: a tie never raises
a metric); on tie-free inputs the result equals FastReID's ``evaluate_rank``.

The ranks are counted, never read from an argsorted row; the one sort is of the negatives' values,
the counting structure. A count that sorts no gallery row (each gallery item binary-searched among
its query's sorted match distances, then binned: ``count_block`` in ``bench/eval_speed.py``) gives
the same CMC / mAP / mINP and was measured ~5x slower (0.350 s vs 0.072 s at VeRi size, idle, where
FastReID's Cython ranker took 0.399 s: a binary search costs tens of ns per item, numpy's SIMD value
sort a few), so it is kept in the benchmark as the measured alternative.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch

if TYPE_CHECKING:
    from numpy.typing import ArrayLike

__all__ = ["evaluate_rank", "rank_block", "curves_from_ranks", "check_labels",
           "metrics_from_negative_counts"]


def evaluate_rank(distmat: Union[np.ndarray, torch.Tensor], q_pids: ArrayLike, g_pids: ArrayLike,
                  q_camids: ArrayLike, g_camids: ArrayLike, max_rank: int = 50,
                  chunk: int = 64) -> Tuple[np.ndarray, List[float], List[float]]:
    """Compute CMC, per-query AP and per-query INP.

    Args:
        distmat (np.ndarray or torch.Tensor): (Q, G) distances, smaller = more similar.
        q_pids, q_camids (array-like): (Q,) query identity / camera labels.
        g_pids, g_camids (array-like): (G,) gallery identity / camera labels.
        max_rank (int): length of the returned CMC curve (capped at G).
        chunk (int): queries processed together (memory ~ chunk x G x 8 bytes).

    Returns:
        tuple: ``(cmc, all_AP, all_INP)``: ``cmc`` is a float32 array of shape (min(max_rank, G),)
        in [0, 1]; ``all_AP`` and ``all_INP`` are lists with one value in [0, 1] per valid query,
        in query order. Same layout as FastReID's ``fastreid.evaluation.rank.evaluate_rank``.

    Raises:
        ValueError: shapes disagree, or no query has a true match in the gallery.
    """
    distmat = distmat.cpu().numpy() if isinstance(distmat, torch.Tensor) else np.asarray(distmat)
    if distmat.dtype not in (np.float32, np.float64):
        distmat = distmat.astype(np.float64)
    if distmat.ndim != 2:
        raise ValueError(f"distmat must be (Q, G), got shape {distmat.shape}")
    num_q, num_g = distmat.shape
    q_pids, g_pids, q_camids, g_camids = check_labels(
        num_q, num_g, q_pids, g_pids, q_camids, g_camids, "distmat has {} query rows",
        "distmat has {} gallery columns")
    max_rank = min(max_rank, num_g)
    first = np.zeros(num_q, dtype=np.int64)  # 1-based rank of the first true match; 0 = no match
    ap = np.full(num_q, np.nan)
    inp = np.full(num_q, np.nan)
    for s in range(0, num_q, chunk):
        e = min(num_q, s + chunk)
        first[s:e], ap[s:e], inp[s:e] = rank_block(distmat[s:e], q_pids[s:e], g_pids,
                                                   q_camids[s:e], g_camids)
    return curves_from_ranks(first, ap, inp, max_rank)


def check_labels(num_q: int, num_g: int, q_pids: ArrayLike, g_pids: ArrayLike,
                 q_camids: ArrayLike, g_camids: ArrayLike, q_what: str, g_what: str
                 ) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four label arrays as numpy, or ValueError unless they are (Q,) and (G,).

    ``q_what`` / ``g_what`` say where Q and G come from (``"{}"`` is replaced by the count).
    """
    q_pids, g_pids, q_camids, g_camids = map(np.asarray, (q_pids, g_pids, q_camids, g_camids))
    if q_pids.shape != (num_q,) or q_camids.shape != (num_q,):
        raise ValueError(f"{q_what.format(num_q)} but got q_pids {q_pids.shape}, "
                         f"q_camids {q_camids.shape}")
    if g_pids.shape != (num_g,) or g_camids.shape != (num_g,):
        raise ValueError(f"{g_what.format(num_g)} but got g_pids {g_pids.shape}, "
                         f"g_camids {g_camids.shape}")
    return q_pids, g_pids, q_camids, g_camids


def rank_block(rows: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray, q_camids: np.ndarray,
               g_camids: np.ndarray,
               pairs: Optional[Sequence[Any]] = None) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-query first-match rank, AP and INP of a block of query rows (see the module docstring).

    Args:
        rows (np.ndarray): (b, G) float32/float64 distances of ``b`` queries.
        q_pids, q_camids (np.ndarray): (b,); g_pids, g_camids (np.ndarray): (G,).
        pairs (sequence or None): verification histograms
            (:class:`~fastreid_plugins.evaluation.verification.PairHistogram`) that also count
            these rows' pairs, from the same same-identity index lists (one pass).

    Returns:
        tuple: ``(first, ap, inp)``, each (b,): the 1-based rank of the first true match (0 when
        the query has none), AP and INP in [0, 1] (NaN when it has none).
    """
    b, num_g = rows.shape
    first = np.zeros(b, dtype=np.int64)
    ap = np.full(b, np.nan)
    inp = np.full(b, np.nan)
    if b == 0:
        return first, ap, inp
    # the few same-identity entries (true matches and junk) as index lists: no (b, G) masks
    r, c = np.nonzero(g_pids[None, :] == q_pids[:, None])
    is_pos = g_camids[c] != q_camids[r]
    for h in pairs or ():
        h.add_sparse(rows, r, c, is_pos)
    rp, cp = r[is_pos], c[is_pos]
    n_pos = np.bincount(rp, minlength=b)
    P = int(n_pos.max())
    if P == 0:
        return first, ap, inp
    inf = np.array(np.inf, dtype=rows.dtype)
    pos_d = np.full((b, P), inf, dtype=rows.dtype)  # (b, P) true-match distances, +inf padded
    slot = np.arange(len(rp)) - (np.cumsum(n_pos) - n_pos)[rp]  # rp is sorted (row-major)
    pos_d[rp, slot] = rows[rp, cp]
    pos_d.sort(axis=1)
    neg_sorted = rows.copy()  # negatives ascending, then +inf (the same-identity entries)
    neg_sorted[r, c] = inf
    neg_sorted.sort(axis=1)
    negs_le = torch.searchsorted(torch.from_numpy(neg_sorted), torch.from_numpy(pos_d),
                                 right=True).numpy()
    return metrics_from_negative_counts(negs_le, n_pos)


def metrics_from_negative_counts(negs_le: np.ndarray,
                                 n_pos: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First-match rank, AP and INP from the counted negatives (the module docstring's formulas).

    Args:
        negs_le (np.ndarray): (b, P) int, ``negs_le[i, k-1]`` = the negatives of query ``i`` at a
            distance <= its k-th closest true match's (columns past ``n_pos[i]`` are ignored).
        n_pos (np.ndarray): (b,) the number of true matches of each query.

    Returns:
        tuple: ``(first, ap, inp)``, each (b,), as :func:`rank_block` returns them.
    """
    b, P = negs_le.shape
    first = np.zeros(b, dtype=np.int64)
    ap = np.full(b, np.nan)
    inp = np.full(b, np.nan)
    k = np.arange(1, P + 1)
    ranks = k[None, :] + negs_le  # (b, P) 1-based ranks of the true matches
    valid = n_pos > 0
    prec = np.where(k[None, :] <= n_pos[:, None], k[None, :] / ranks, 0.0)
    last = np.take_along_axis(ranks, np.maximum(n_pos - 1, 0)[:, None], axis=1)[:, 0]
    first[valid] = ranks[valid, 0]
    ap[valid] = prec.sum(1)[valid] / n_pos[valid]
    inp[valid] = n_pos[valid] / last[valid]
    return first, ap, inp


def curves_from_ranks(first: np.ndarray, ap: np.ndarray, inp: np.ndarray,
                      max_rank: int) -> Tuple[np.ndarray, List[float], List[float]]:
    """CMC over the valid queries and their AP / INP lists (the layout of :func:`evaluate_rank`).

    Args:
        first (np.ndarray): (Q,) 1-based first-match ranks, 0 for queries without a true match.
        ap, inp (np.ndarray): (Q,) per-query AP / INP (ignored where ``first == 0``).
        max_rank (int): length of the CMC curve.

    Raises:
        ValueError: no query has a true match.
    """
    valid = first > 0
    if not valid.any():
        raise ValueError("No query has a true match in the gallery (after removing same-camera "
                         "images of the same identity): check query/gallery pids and camids.")
    cmc = (first[valid][:, None] <= np.arange(1, max_rank + 1)[None, :]).mean(0).astype(np.float32)
    return cmc, ap[valid].tolist(), inp[valid].tolist()
