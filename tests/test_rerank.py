"""Sparse k-reciprocal re-ranking vs hand-computed values and FastReID's dense implementation."""

import math

import numpy as np
import pytest
import torch
from fastreid.utils.compute_dist import build_dist

import fastreid_plugins  # noqa: F401  (patches: FastReID's jaccard path on the CPU)
from fastreid_plugins.config import get_cfg
from fastreid_plugins.evaluation import VehicleReidEvaluator
from fastreid_plugins.evaluation.knn import knn_search
from fastreid_plugins.evaluation.rerank import rerank_distance
from fastreid_plugins.evaluation.sparse_rerank import (
    k_reciprocal_neighbours,
    sparse_jaccard_distance,
    sparse_rerank,
)


def clustered(n, dim, ids, seed, normalise=True, noise=0.7):
    """Random re-id-like features: identity centre + noise; returns (features, pids)."""
    g = torch.Generator().manual_seed(seed)
    pids = torch.randint(0, ids, (n,), generator=g)
    x = torch.randn(ids, dim, generator=g)[pids] + noise * torch.randn(n, dim, generator=g)
    return (torch.nn.functional.normalize(x, dim=1) if normalise else x), pids


def rerank_cfg(kind, k1=20, k2=6, lam=0.3, metric="cosine"):
    cfg = get_cfg()
    cfg.TEST.RERANK.ENABLED = True
    cfg.TEST.RERANK.K1, cfg.TEST.RERANK.K2, cfg.TEST.RERANK.LAMBDA = k1, k2, lam
    cfg.TEST.RERANK.TYPE = kind  # key added by add_plugins_config (set here if not yet)
    cfg.TEST.METRIC = metric
    return cfg


# ------------------------------------------------------------------ hand-computed values
def test_k_reciprocal_neighbours_by_hand():
    # neighbour table of 4 points; 0<->1 and 2<->3 are mutual, 1 is not in 2's list
    rank = np.array([[0, 1, 2], [1, 0, 3], [2, 3, 0], [3, 2, 1]])
    # k=1 uses the first 2 columns (FastReID slices [:k + 1])
    got = k_reciprocal_neighbours(rank, 1)
    assert got.tolist() == [[0, 1], [1, 0], [2, 3], [3, 2]]
    # k=2: 3 columns; 0 has 2 in its list and 2 has 0 -> reciprocal; 1-3 likewise
    got = k_reciprocal_neighbours(rank, 2)
    assert got.tolist() == [[0, 1, 2], [1, 0, 3], [2, 3, 0], [3, 2, 1]]
    # a neighbour that does not list the point back is dropped (slot -1)
    rank = np.array([[0, 2], [1, 0], [2, 1]])
    assert k_reciprocal_neighbours(rank, 1).tolist() == [[0, -1], [1, -1], [2, -1]]


@pytest.mark.parametrize("k2, expected", [(1, 1 - 1 / math.e), (2, 0.0)])
def test_jaccard_two_pairs_by_hand(k2, expected):
    """Points 0, 1, 10, 11 on a line, k1 = 2: R*(0) = R*(1) = {0, 1}, R*(2) = R*(3) = {2, 3}.

    V[0] = softmax(-(0, 1)) = (a, b), V[1] = (b, a) with a = 1/(1+e^-1), b = 1 - a, so
    m = sum min = 2b = 2/(e+1) and d_J = 1 - m/(2-m) = 1 - 1/e (Zhong et al. Eq. 10).
    With k2 = 2 both rows become (1/2, 1/2): m = 1, d_J = 0. Disjoint sets: d_J = 1.
    """
    x = torch.tensor([[0.0], [1.0], [10.0], [11.0]])
    jac = sparse_jaccard_distance(x[:1], x[1:], k1=2, k2=k2, knn="faiss")
    np.testing.assert_allclose(jac, [[expected, 1.0, 1.0]], atol=1e-6)
    ref = build_dist(x[:1], x[1:], metric="jaccard", k1=2, k2=k2)
    np.testing.assert_allclose(jac, ref, atol=1e-6)
    # Eq. 12 blend with lambda = 0.25 and an arbitrary original distance
    dist = np.array([[0.4, 2.0, 3.0]], dtype=np.float32)
    out = sparse_rerank(x[:1], x[1:], dist, k1=2, k2=k2, lambda_value=0.25, knn="faiss")
    np.testing.assert_allclose(out, 0.75 * np.array([[expected, 1, 1]]) + 0.25 * dist, atol=1e-6)


# ------------------------------------------------------------------ vs FastReID's implementation
@pytest.mark.parametrize("n, q, dim, k1, k2, normalise", [
    (400, 80, 64, 20, 6, True),    # FastReID defaults, cosine-style features
    (300, 60, 32, 20, 6, False),   # un-normalised (euclidean) features
    (250, 50, 16, 7, 3, True),     # odd k1: round(7 / 2) = 4 (half set uses 5 columns)
    (200, 40, 16, 5, 1, True),     # k1 = 5: np.around(2.5) = 2; k2 = 1 (no query expansion)
])
def test_jaccard_equals_fastreid(n, q, dim, k1, k2, normalise):
    x, _ = clustered(n, dim, ids=n // 10, seed=n + k1, normalise=normalise)
    ref = build_dist(x[:q], x[q:], metric="jaccard", k1=k1, k2=k2)
    got = sparse_jaccard_distance(x[:q], x[q:], k1=k1, k2=k2, knn="faiss", device="cpu")
    assert got.shape == ref.shape == (q, n - q) and got.dtype == np.float32
    assert np.abs(got - ref).max() < 1e-4
    # not a trivial all-ones matrix: plenty of overlapping neighbour sets
    assert (ref < 0.99).mean() > 0.01


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_rerank_distance_sparse_equals_fastreid_path(metric):
    x, _ = clustered(500, 48, ids=40, seed=7)
    qf, gf = x[:100] * 3.0, x[100:] * 3.0  # scaled: the cosine path must re-normalise
    dist = build_dist(qf, gf, metric)
    ref = rerank_distance(rerank_cfg("fastreid", metric=metric), qf, gf, dist)
    got = sparse_rerank(qf, gf, dist, k1=20, k2=6, lambda_value=0.3, normalize=metric == "cosine")
    assert np.abs(got - ref).max() < 1e-4
    # identical ranking of every gallery image for every query
    np.testing.assert_array_equal(np.argsort(got, 1, kind="stable"),
                                  np.argsort(ref, 1, kind="stable"))
    # re-ranking changes the ranking (the test would be vacuous otherwise)
    assert (np.argsort(got, 1)[:, :10] != np.argsort(dist, 1)[:, :10]).any()


def hard_knn_set(n=900, dim=48, seed=21, spread=10.0):
    """Features that stress the k-NN: cluster structure, norms from 1 / spread to spread (the
    screen's per-row terms), and exact duplicates (tied distances) of the first 40 rows."""
    x, _ = clustered(n, dim, ids=60, seed=seed, normalise=False, noise=0.5)
    g = torch.Generator().manual_seed(seed + 1)
    x = x * torch.exp(torch.empty(n, 1).uniform_(-math.log(spread), math.log(spread),
                                                 generator=g))
    x[n - 40:] = x[:40]  # duplicates
    return x


def assert_same_neighbours(got, ref, x):
    """Row by row, the k neighbour distances (float64) equal those of the reference up to float32
    rounding: the same neighbours, whichever of exactly tied points each search returns."""
    xd = x.double()
    d_got = ((xd[:, None, :] - xd[torch.from_numpy(got)]) ** 2).sum(-1).sort(1).values
    d_ref = ((xd[:, None, :] - xd[torch.from_numpy(ref)]) ** 2).sum(-1).sort(1).values
    scale = (xd * xd).sum(1, keepdim=True)
    assert ((d_got - d_ref).abs() <= 1e-5 * scale).all()
    unique = np.arange(40, len(x) - 40)  # rows without a duplicate (hard_knn_set)
    assert (got[unique, 0] == unique).all() and (ref[unique, 0] == unique).all()


@pytest.mark.parametrize("screen", [False, True])
@pytest.mark.parametrize("onednn", [False, True])
def test_symmetric_knn_paths_equal_faiss(screen, onednn):
    # the float32 GEMM (torch.mm or oneDNN) and the certified bfloat16 screen give faiss's exact
    # neighbours on features with mixed norms and duplicates, over uneven blocks
    from fastreid_plugins.evaluation.knn import _knn_symmetric

    x = hard_knn_set()
    ref = knn_search(x, 15, backend="faiss")
    got = _knn_symmetric(x, 15, False, block=128, onednn=onednn, screen=screen)
    assert_same_neighbours(got, ref, x)


def test_merge_into_topk_by_hand():
    from fastreid_plugins.evaluation.knn import _merge_into_topk

    best_d = torch.tensor([[1.0, 3.0, 5.0], [0.0, 2.0, 4.0], [7.0, 8.0, 9.0]])
    best_i = torch.tensor([[10, 11, 12], [20, 21, 22], [30, 31, 32]])
    # row 0 gets 2.0 and 0.5; row 2 gets 8.5 and 1.0 (given unsorted); row 1 nothing
    _merge_into_topk(best_d, best_i, torch.tensor([2, 0, 2, 0]), torch.tensor([40, 41, 42, 43]),
                     torch.tensor([8.5, 2.0, 1.0, 0.5]))
    assert best_d.tolist() == [[0.5, 1.0, 2.0], [0.0, 2.0, 4.0], [1.0, 7.0, 8.0]]
    assert best_i.tolist() == [[43, 10, 41], [20, 21, 22], [42, 30, 31]]


def test_screen_rows_failing_the_certificate_are_searched_again():
    # no margin (the screen keeps exactly k columns): many rows cannot be certified, and the
    # float32 search of those rows still gives the exact answer
    from fastreid_plugins.evaluation import knn as kn

    x = hard_knn_set(seed=23)
    sq = (x * x).sum(1)
    got = kn._knn_screened(x, sq, 15, False, block=128, onednn=True, margin=0)
    assert kn._knn_screened.last_uncertified > 20
    assert_same_neighbours(got, knn_search(x, 15, backend="faiss"), x)
    # with the default margin (2k columns kept) and norms as re-id features have them, the
    # screen certifies most rows
    x = hard_knn_set(seed=24, spread=1.25)
    got = kn._knn_screened(x, (x * x).sum(1), 15, False, block=128, onednn=True)
    assert kn._knn_screened.last_uncertified < len(x) // 10
    assert_same_neighbours(got, knn_search(x, 15, backend="faiss"), x)


def test_screen_error_bound_holds_for_every_pair():
    # the certificate rests on |2 mu + 2 s~_ij - d_ij| <= 2 E_i + 2^-6 |s~_ij| for every pair,
    # d_ij computed here in float64 from the float32 features: check it on the whole matrix
    from fastreid_plugins.evaluation.knn import _screen_blocks

    for spread, informative in ((10.0, False), (1.25, True)):
        x = hard_knn_set(n=600, dim=300, seed=25, spread=spread)
        sq = (x * x).sum(1)
        mu, left, right, err = _screen_blocks(x, sq, 10, True, sample=200)
        keys = torch.mm(left(slice(None)), right(slice(None)).t()).double()
        xd = x.double()
        d = sq.double()[:, None] + sq.double()[None, :] - 2 * xd @ xd.t()
        gap = (2 * mu + 2 * keys - d).abs()
        allowed = 2 * err[:, None] + 2.0 ** -6 * keys.abs()
        assert (gap <= allowed).all(), float((gap - allowed).max())
        if informative:  # with re-id-like norms the screen's error is a small fraction of them
            rel = gap / (sq.double()[:, None] + sq.double()[None, :])
            assert float(rel.max()) < 0.01, float(rel.max())


def test_onednn_gemm_falls_back_when_the_op_fails(monkeypatch):
    from fastreid_plugins.evaluation import knn as kn

    def broken(*args, **kwargs):
        raise RuntimeError("no oneDNN here")

    monkeypatch.setattr(kn, "_ONEDNN_OK", None)
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", broken)
    assert kn._onednn_available() is False
    x = hard_knn_set(n=300, seed=27)
    assert_same_neighbours(kn._knn_symmetric(x, 10, False, block=64, screen=False),
                           knn_search(x, 10, backend="faiss"), x)


def test_evaluator_rerank_types_agree():
    x, pids = clustered(300, 32, ids=30, seed=3, noise=1.0)
    camids = torch.arange(300) % 5
    results = {}
    for kind in ("sparse", "fastreid"):
        ev = VehicleReidEvaluator(rerank_cfg(kind, k1=10, k2=3), num_query=60)
        for s in range(0, 300, 64):
            ev.process({"targets": pids[s:s + 64], "camids": camids[s:s + 64]}, x[s:s + 64])
        results[kind] = ev.evaluate()
    for key in ("Rank-1", "Rank-5", "mAP", "mINP"):
        assert results["sparse"][key] == pytest.approx(results["fastreid"][key], abs=1e-6)


def test_torch_knn_equals_faiss():
    x, _ = clustered(700, 24, ids=50, seed=11)
    a = knn_search(x, 12, backend="faiss")
    b = knn_search(x, 12, backend="torch", device="cpu")
    np.testing.assert_array_equal(a, b)
    # nearest neighbour of every point is itself, neighbours sorted by distance
    assert (a[:, 0] == np.arange(700)).all()
    d = torch.cdist(x, x)
    gathered = torch.gather(d, 1, torch.from_numpy(a))
    assert (gathered[:, 1:] >= gathered[:, :-1] - 1e-6).all()


def test_progress_bars(capsys, monkeypatch):
    """Bars on a terminal; none when stderr is not one (a log file gets no "0%|" lines)."""
    import sys

    x, _ = clustered(120, 8, ids=12, seed=5)
    sparse_jaccard_distance(x[:20], x[20:], k1=10, k2=3, progress=True)
    assert "re-ranking" not in capsys.readouterr().err
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    sparse_jaccard_distance(x[:20], x[20:], k1=10, k2=3, progress=True)
    err = capsys.readouterr().err
    assert "re-ranking: k-NN" in err and "re-ranking: Jaccard" in err


# ------------------------------------------------------------------ bad input
def test_bad_arguments_raise_clear_errors():
    x, _ = clustered(30, 8, ids=3, seed=1)
    with pytest.raises(ValueError, match="TEST.RERANK.K1"):
        sparse_jaccard_distance(x[:10], x[10:], k1=31)
    with pytest.raises(ValueError, match="TEST.RERANK.K2"):
        sparse_jaccard_distance(x[:10], x[10:], k1=5, k2=0)
    with pytest.raises(ValueError, match="dimension"):
        sparse_jaccard_distance(x[:10, :4], x[10:], k1=5)
    with pytest.raises(ValueError, match="LAMBDA"):
        sparse_rerank(x[:10], x[10:], np.zeros((10, 20)), k1=5, lambda_value=1.5)
    with pytest.raises(ValueError, match=r"\(10, 20\)"):
        sparse_rerank(x[:10], x[10:], np.zeros((20, 10)), k1=5)
    with pytest.raises(ValueError, match="knn backend"):
        knn_search(x, 3, backend="annoy")
    with pytest.raises(ValueError, match="TEST.RERANK.TYPE"):
        rerank_distance(rerank_cfg("dense"), x[:10], x[10:], np.zeros((10, 20)))
    with pytest.raises(ValueError, match="sparse_rerank"):  # the sparse type runs chunked
        rerank_distance(rerank_cfg("sparse"), x[:10], x[10:], np.zeros((10, 20)))


@pytest.mark.parametrize("block", [64, 100, 700])
def test_symmetric_knn_equals_faiss(block):
    # each block pair of X X^T computed once, both row blocks updated: same neighbours as a full
    # search, whatever the block size (one block, uneven last block, many blocks)
    from fastreid_plugins.evaluation.knn import _knn_symmetric

    x, _ = clustered(700, 24, ids=50, seed=12)
    np.testing.assert_array_equal(_knn_symmetric(x, 12, False, block=block),
                                  knn_search(x, 12, backend="faiss"))
