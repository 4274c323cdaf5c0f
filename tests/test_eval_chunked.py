"""Query-chunked evaluation against the full-matrix path (FastReID's build_dist / aqe + the
re-ranker + evaluate_rank), with ties and junk, for several block sizes; VehicleID protocol;
approximate k-NN switch; memory budget."""

import numpy as np
import pytest
import torch
from fastreid.evaluation.query_expansion import aqe as fastreid_aqe
from fastreid.utils.compute_dist import build_dist
from helpers import make_cfg

import fastreid_plugins  # noqa: F401
from fastreid_plugins.evaluation import VehicleReidEvaluator, evaluate_rank, vehicleid_split
from fastreid_plugins.evaluation import chunked as chunked_mod
from fastreid_plugins.evaluation.chunked import (
    BYTES_PER_ENTRY,
    chunk_rows,
    evaluate_chunked,
    options_from_cfg,
)
from fastreid_plugins.evaluation.knn import knn_search
from fastreid_plugins.evaluation.sparse_rerank import sparse_rerank

CFG = "configs/demo/bagtricks_r18.yml"
NQ, NG = 23, 61


def tie_features(n, dim=12, seed=0):
    """Rows with exactly four entries +-1: F.normalize gives +-0.5 exactly, so every cosine and
    euclidean distance is exact in float32 and many distances tie exactly (whatever the order of
    the products in a matrix multiply)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((n, dim), dtype=np.float32)
    for i in range(n):
        x[i, rng.choice(dim, 4, replace=False)] = rng.choice([-1.0, 1.0], 4)
    x[NQ + 5:NQ + 9] = x[NQ + 1]  # duplicated gallery images: exact ties of any metric
    return torch.from_numpy(x)


def labels(seed=0):
    rng = np.random.default_rng(seed + 100)
    pids, cams = rng.integers(0, 6, NQ + NG), rng.integers(0, 3, NQ + NG)
    pids[NQ + 5:NQ + 9] = pids[NQ + 1]  # tied duplicates: some true matches, some junk
    cams[NQ + 5:NQ + 7] = cams[1]
    pids[1] = pids[NQ + 1]
    return pids[:NQ], pids[NQ:], cams[:NQ], cams[NQ:]


def full_matrix(qf, gf, q_pids, g_pids, q_cams, g_cams, metric, use_aqe, use_rerank):
    """The full-matrix path: FastReID's aqe / build_dist, sparse_rerank on the whole (Q, G)
    matrix (features normalised for cosine, as FastReID's evaluator does), evaluate_rank."""
    if use_aqe:
        qf, gf = fastreid_aqe(qf, gf, 1, 4, 3.0)
    dist = build_dist(qf, gf, metric)
    if use_rerank:
        dist = sparse_rerank(qf, gf, dist, k1=6, k2=3, lambda_value=0.3,
                             normalize=metric == "cosine")
    return evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=50), dist


def chunk_opts(metric, use_aqe, use_rerank):
    return dict(metric=metric, aqe={"qe_times": 1, "qe_k": 4, "alpha": 3.0} if use_aqe else None,
                rerank={"k1": 6, "k2": 3, "lambda_value": 0.3, "device": "cpu"}
                if use_rerank else None)


def budget_for(rows, ng=NG):
    """The memory budget (GiB) that gives blocks of ``rows`` queries."""
    return rows * BYTES_PER_ENTRY * ng / 2**30


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("use_rerank", [False, True])
@pytest.mark.parametrize("rows", [1, 4, NQ])
def test_chunked_equals_full_matrix_with_ties_and_junk(metric, use_rerank, rows):
    x = tie_features(NQ + NG)
    q_pids, g_pids, q_cams, g_cams = labels()
    (cmc, ap, inp), dist = full_matrix(x[:NQ], x[NQ:], q_pids, g_pids, q_cams, g_cams, metric,
                                       False, use_rerank)
    # the fixture really has exact ties between a true match and a negative, and junk
    assert len(np.unique(dist[1])) < NG
    res = evaluate_chunked(x[:NQ], x[NQ:], q_pids, g_pids, q_cams, g_cams,
                           memory_gb=budget_for(rows), **chunk_opts(metric, False, use_rerank))
    assert res["chunk"] == rows
    np.testing.assert_array_equal(res["cmc"], cmc)
    np.testing.assert_allclose(res["all_ap"], ap, rtol=0, atol=1e-12)
    np.testing.assert_allclose(res["all_inp"], inp, rtol=0, atol=1e-12)


@pytest.mark.parametrize("use_rerank", [False, True])
@pytest.mark.parametrize("rows", [1, 7, NQ])
def test_chunked_aqe_equals_fastreid_aqe(use_rerank, rows):
    # AQE's weighted means round differently in blocks: Gaussian features (no exact ties)
    x = torch.randn(NQ + NG, 16, generator=torch.Generator().manual_seed(1))
    q_pids, g_pids, q_cams, g_cams = labels(1)
    (cmc, ap, inp), _ = full_matrix(x[:NQ], x[NQ:], q_pids, g_pids, q_cams, g_cams, "cosine",
                                    True, use_rerank)
    res = evaluate_chunked(x[:NQ], x[NQ:], q_pids, g_pids, q_cams, g_cams,
                           memory_gb=budget_for(rows), **chunk_opts("cosine", True, use_rerank))
    np.testing.assert_array_equal(res["cmc"], cmc)
    assert abs(np.mean(res["all_ap"]) - np.mean(ap)) < 1e-8  # 1e-6 in percent
    assert abs(np.mean(res["all_inp"]) - np.mean(inp)) < 1e-8


def test_chunked_aqe_features_equal_fastreid():
    x = torch.randn(50, 8, generator=torch.Generator().manual_seed(2))
    ref_q, ref_g = fastreid_aqe(x[:10], x[10:], 2, 5, 3.0)
    got_q, got_g = chunked_mod.chunked_aqe(x[:10], x[10:], 2, 5, 3.0, memory_gb=1e-6)
    torch.testing.assert_close(got_q, ref_q.float(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got_g, ref_g.float(), rtol=1e-5, atol=1e-6)


def test_blocks_follow_the_budget_and_no_full_matrix(monkeypatch):
    shapes = []
    real = chunked_mod.rank_block

    def spy(rows, *a):
        shapes.append(rows.shape)
        return real(rows, *a)

    monkeypatch.setattr(chunked_mod, "rank_block", spy)
    x = tie_features(NQ + NG)
    q_pids, g_pids, q_cams, g_cams = labels()
    evaluate_chunked(x[:NQ], x[NQ:], q_pids, g_pids, q_cams, g_cams, memory_gb=budget_for(5))
    assert shapes == [(5, NG)] * 4 + [(3, NG)]
    shapes.clear()
    monkeypatch.setattr(chunked_mod, "_RANK_ROWS", 2)  # ranked in row groups inside a block
    evaluate_chunked(x[:NQ], x[NQ:], q_pids, g_pids, q_cams, g_cams, memory_gb=budget_for(5))
    assert shapes == ([(2, NG)] * 2 + [(1, NG)]) * 4 + [(2, NG), (1, NG)]


def test_chunk_rows_from_budget():
    assert chunk_rows(128517, 1.0) == 2**30 // (40 * 128517) == 208  # VERI-Wild Large, default
    assert chunk_rows(10**9, 1e-3) == 1
    for bad in (0, -1, None, "x", float("nan")):
        with pytest.raises(ValueError, match="TEST.EVAL_MEMORY_GB"):
            chunk_rows(100, bad)


@pytest.mark.parametrize("use_rerank", [False, True])
def test_topk_lists_equal_stable_argsort_of_full_matrix(use_rerank):
    x = tie_features(NQ + NG)
    q_pids, g_pids, q_cams, g_cams = labels()
    _, dist = full_matrix(x[:NQ], x[NQ:], q_pids, g_pids, q_cams, g_cams, "cosine", False,
                          use_rerank)
    res = evaluate_chunked(x[:NQ], x[NQ:], q_pids, g_pids, q_cams, g_cams, topk=5,
                           memory_gb=budget_for(3), **chunk_opts("cosine", False, use_rerank))
    for q in range(NQ):
        order = np.argsort(dist[q], kind="stable")
        junk = (g_pids[order] == q_pids[q]) & (g_cams[order] == q_cams[q])
        exp = order[~junk][:5]
        np.testing.assert_array_equal(res["topk_index"][q], exp)
        np.testing.assert_array_equal(res["topk_dist"][q], dist[q, exp])


@pytest.mark.parametrize("opts", [[], ["TEST.RERANK.ENABLED", True, "TEST.RERANK.K1", 6,
                                       "TEST.RERANK.K2", 3, "TEST.AQE.ENABLED", True,
                                       "TEST.AQE.QE_K", 4, "TEST.AQE.ALPHA", 3.0]])
def test_vehicleid_protocol_chunked_equals_full_matrix(opts):
    cfg = make_cfg(CFG, ["TEST.VEHICLEID.NUM_TRIALS", 3, "TEST.EVAL_MEMORY_GB", budget_for(2, 30)]
                   + opts)
    g = torch.Generator().manual_seed(3)
    pids = torch.randint(0, 30, (90,), generator=g)
    feats = torch.randn(90, 16, generator=g) + 2 * torch.randn(30, 16, generator=g)[pids]
    ev = VehicleReidEvaluator(cfg, 0, "", protocol="vehicleid")
    ev.reset()
    ev.process({"targets": pids, "camids": torch.zeros(90, dtype=torch.long)}, feats)
    got = ev.evaluate()
    ref = []
    p = pids.numpy()
    for t in range(3):
        q, gi = vehicleid_split(p, np.random.default_rng(t))
        (cmc, ap, inp), _ = full_matrix(feats[q], feats[gi], p[q], p[gi], np.zeros(len(q)),
                                        np.ones(len(gi)), "cosine", bool(opts), bool(opts))
        ref.append((float(cmc[0]) * 100, np.mean(ap) * 100, np.mean(inp) * 100))
    ref = np.mean(ref, 0)
    assert got["Rank-1"] == pytest.approx(ref[0], abs=1e-6)
    assert got["mAP"] == pytest.approx(ref[1], abs=1e-6)
    assert got["mINP"] == pytest.approx(ref[2], abs=1e-6)


def test_evaluator_fastreid_rerank_type_keeps_full_matrix_path_and_agrees():
    g = torch.Generator().manual_seed(4)
    feats = torch.randn(80, 16, generator=g)
    pids, cams = torch.randint(0, 8, (80,), generator=g), torch.randint(0, 3, (80,), generator=g)
    res = {}
    for kind in ("sparse", "fastreid"):
        cfg = make_cfg(CFG, ["TEST.RERANK.ENABLED", True, "TEST.RERANK.K1", 6, "TEST.RERANK.K2",
                             3, "TEST.RERANK.TYPE", kind, "TEST.EVAL_MEMORY_GB", 1e-6])
        ev = VehicleReidEvaluator(cfg, 20, "")
        ev.reset()
        ev.process({"targets": pids, "camids": cams}, feats)
        res[kind] = ev.evaluate()
    for k in ("Rank-1", "mAP", "mINP"):
        assert res["sparse"][k] == pytest.approx(res["fastreid"][k], abs=1e-4), k


def test_bad_budget_and_knn_keys_raise_clear_errors():
    feats = torch.randn(20, 4)
    cfg = make_cfg(CFG, ["TEST.EVAL_MEMORY_GB", 0.0])
    ev = VehicleReidEvaluator(cfg, 5, "")
    ev.process({"targets": torch.arange(20) % 5, "camids": torch.arange(20) % 2}, feats)
    with pytest.raises(ValueError, match="TEST.EVAL_MEMORY_GB"):
        ev.evaluate()
    with pytest.raises(ValueError, match="TEST.RERANK.KNN"):
        options_from_cfg(make_cfg(CFG, ["TEST.RERANK.ENABLED", True, "TEST.RERANK.KNN", "lsh"]))


def clustered(n=400, dim=16, ids=40, seed=5):
    g = torch.Generator().manual_seed(seed)
    lab = torch.randint(0, ids, (n,), generator=g)
    return (torch.randn(ids, dim, generator=g)[lab] + 0.3 * torch.randn(n, dim, generator=g)), lab


@pytest.mark.parametrize("backend,params", [("ivf", {"nlist": 4, "nprobe": 4}),
                                            ("hnsw", {"ef_search": 400})])
def test_approximate_knn_exhaustive_settings_equal_exact(backend, params):
    # searching every IVF cell / a beam as wide as the set, with exact re-scoring of the
    # candidates, must give the exact neighbours
    x, _ = clustered()
    exact = knn_search(x, 10, backend="faiss")
    got = knn_search(x, 10, backend=backend, **params)
    assert (got == exact).mean() > 0.999


def test_approximate_knn_recall_and_metric_switch():
    x, lab = clustered(n=600, seed=6)
    exact = knn_search(x, 10, backend="faiss")
    got = knn_search(x, 10, backend="ivf", nlist=16, nprobe=2)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(got, exact)])
    assert 0.5 < recall <= 1.0
    cfg = make_cfg(CFG, ["TEST.RERANK.ENABLED", True, "TEST.RERANK.KNN", "ivf",
                         "TEST.RERANK.KNN_NPROBE", 16])
    opts = options_from_cfg(cfg)
    assert opts["rerank"]["knn"] == "ivf" and opts["rerank"]["knn_params"]["nprobe"] == 16
    q_pids, g_pids = lab[:100].numpy(), lab[100:].numpy()
    cams = np.zeros(600)
    cams[100:] = 1
    res = evaluate_chunked(x[:100], x[100:], q_pids, g_pids, cams[:100], cams[100:],
                           rerank={"k1": 10, "k2": 3, "lambda_value": 0.3, "knn": "ivf",
                                   "knn_params": {"nlist": 8, "nprobe": 8}})
    ref = evaluate_chunked(x[:100], x[100:], q_pids, g_pids, cams[:100], cams[100:],
                           rerank={"k1": 10, "k2": 3, "lambda_value": 0.3})
    assert abs(np.mean(res["all_ap"]) - np.mean(ref["all_ap"])) < 1e-3
