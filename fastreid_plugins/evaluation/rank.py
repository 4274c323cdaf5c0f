"""CMC, mAP and mINP for re-identification, without sorting the gallery.

Reference:
    - CMC / mAP with the Market-1501 junk rule: Zheng et al., "Scalable Person Re-identification:
      A Benchmark", ICCV 2015; the same rule as FastReID's ``evaluate_rank``.
    - mINP: Ye et al., "Deep Learning for Person Re-identification: A Survey and Outlook",
      TPAMI 2021, Eq. 7: ``INP_i = |G_i| / R_i^hard`` with ``R_i^hard`` the rank of the hardest
      (last) true match.
    - MFG-Net (Xu et al.), Eq. 4-6, uses the same three metrics.

For each query, gallery images that share both its pid and its camid are junk and removed; the
remaining gallery images with the query's pid are its true matches. A query without any true match
is skipped (as in FastReID). With ``n_pos`` true matches at 1-based ranks ``r_1 < ... < r_n`` among
the kept gallery images::

    AP   = mean_k ( k / r_k )
    INP  = n_pos / r_n
    CMC@m = 1 if r_1 <= m else 0

Instead of argsorting the whole (Q, G) distance matrix, the rank of each true match is
``k + #(negatives strictly closer)``, counted with one ``searchsorted`` of the negatives into the
query's few sorted true-match distances: O(G log n_pos) per query instead of O(G log G),
batched over the queries of one identity.
Ties between a true match and a negative count against the true match (a conservative choice: a
tie never raises a metric); on tie-free inputs the result equals FastReID's ``evaluate_rank``.
"""

import numpy as np
import torch

__all__ = ["evaluate_rank"]


def evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=50):
    """Compute CMC, per-query AP and per-query INP.

    Args:
        distmat (np.ndarray or torch.Tensor): (Q, G) distances, smaller = more similar.
        q_pids, q_camids (np.ndarray): (Q,) query identity / camera labels.
        g_pids, g_camids (np.ndarray): (G,) gallery identity / camera labels.
        max_rank (int): length of the returned CMC curve (capped at G).

    Returns:
        tuple: ``(cmc, all_AP, all_INP)``: ``cmc`` is a float32 array of shape (min(max_rank, G),)
        in [0, 1]; ``all_AP`` and ``all_INP`` are lists with one value in [0, 1] per valid query.
        Same layout as FastReID's ``fastreid.evaluation.rank.evaluate_rank``.

    Raises:
        ValueError: shapes disagree, or no query has a true match in the gallery.
    """
    distmat = np.asarray(distmat.cpu().numpy() if hasattr(distmat, "cpu") else distmat)
    q_pids, g_pids = np.asarray(q_pids), np.asarray(g_pids)
    q_camids, g_camids = np.asarray(q_camids), np.asarray(g_camids)
    num_q, num_g = distmat.shape
    if q_pids.shape != (num_q,) or q_camids.shape != (num_q,):
        raise ValueError(f"distmat has {num_q} query rows but got q_pids {q_pids.shape}, "
                         f"q_camids {q_camids.shape}")
    if g_pids.shape != (num_g,) or g_camids.shape != (num_g,):
        raise ValueError(f"distmat has {num_g} gallery columns but got g_pids {g_pids.shape}, "
                         f"g_camids {g_camids.shape}")
    max_rank = min(max_rank, num_g)

    if distmat.dtype not in (np.float32, np.float64):
        distmat = distmat.astype(np.float64)
    dist = torch.from_numpy(np.ascontiguousarray(distmat))
    # per query, filled in query order; 0 / NaN = query without a true match
    first_ranks = np.zeros(num_q, dtype=np.int64)
    ap = np.full(num_q, np.nan)
    inp = np.full(num_q, np.nan)
    # queries of one identity share their gallery split into true-match and negative columns,
    # so each identity is one batched searchsorted
    order = np.argsort(q_pids, kind="stable")
    uniq, starts = np.unique(q_pids[order], return_index=True)
    bounds = list(starts[1:]) + [num_q]
    for pid, s, e in zip(uniq, starts, bounds):
        pos_cols = np.flatnonzero(g_pids == pid)
        if len(pos_cols) == 0:
            continue
        qs = order[s:e]
        junk = torch.from_numpy(g_camids[pos_cols][None, :] == q_camids[qs][:, None])  # (b, P)
        n_pos = (~junk).sum(1)  # (b,)
        rows = dist[torch.from_numpy(qs)]  # (b, G)
        pos_d = rows[:, torch.from_numpy(pos_cols)].masked_fill(junk, float("inf"))
        pos_d = pos_d.sort(dim=1).values  # kept true matches first, junk (+inf) last
        neg_d = rows[:, torch.from_numpy(np.flatnonzero(g_pids != pid))]
        # idx = number of true matches strictly closer than each negative; a negative tied with
        # a true match therefore lands before it (ties go against the true match)
        idx = torch.searchsorted(pos_d, neg_d.contiguous(), side="left")  # (b, N) in [0, P]
        P = pos_d.shape[1]
        counts = torch.zeros(len(qs), P + 1, dtype=torch.int64).scatter_add_(
            1, idx, torch.ones_like(idx))
        k = torch.arange(1, P + 1)
        ranks = k[None, :] + counts.cumsum(1)[:, :P]  # (b, P) 1-based ranks of the true matches
        valid = n_pos > 0
        valid_mask = k[None, :] <= n_pos[:, None]
        prec = torch.where(valid_mask, k[None, :] / ranks, torch.zeros(()))
        last = ranks.gather(1, (n_pos - 1).clamp(min=0)[:, None])[:, 0]
        qv = qs[valid.numpy()]
        first_ranks[qv] = ranks[valid, 0].numpy()
        ap[qv] = (prec.sum(1)[valid] / n_pos[valid]).numpy()
        inp[qv] = (n_pos[valid] / last[valid]).numpy()
    valid = first_ranks > 0
    if not valid.any():
        raise ValueError("No query has a true match in the gallery (after removing same-camera "
                         "images of the same identity): check query/gallery pids and camids.")
    first_ranks = first_ranks[valid]
    cmc = (first_ranks[:, None] <= np.arange(1, max_rank + 1)[None, :]).mean(0).astype(np.float32)
    return cmc, ap[valid].tolist(), inp[valid].tolist()
