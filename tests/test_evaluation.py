"""The vectorised ranker and the evaluator against FastReID's implementation and hand examples."""

import json

import numpy as np
import pytest
import torch
from fastreid.evaluation.rank import evaluate_py
from helpers import make_cfg

import fastreid_plugins  # noqa: F401
from fastreid_plugins.evaluation import VehicleReidEvaluator, evaluate_rank, metrics_from_distmat

CFG = "configs/demo/bagtricks_r18.yml"


@pytest.mark.parametrize("seed", range(6))
def test_equals_fastreid_on_random_inputs(seed):
    rng = np.random.default_rng(seed)
    nq, ng = rng.integers(5, 80), rng.integers(60, 300)
    dist = rng.random((nq, ng)).astype(np.float32)
    q_pids, g_pids = rng.integers(0, 10, nq), rng.integers(0, 10, ng)
    q_cams, g_cams = rng.integers(0, 4, nq), rng.integers(0, 4, ng)
    ref_cmc, ref_ap, ref_inp = evaluate_py(dist, q_pids, g_pids, q_cams, g_cams, 20, False)
    cmc, ap, inp = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    np.testing.assert_allclose(cmc, ref_cmc, atol=1e-7)
    np.testing.assert_allclose(ap, ref_ap, atol=1e-12)
    np.testing.assert_allclose(inp, ref_inp, atol=1e-12)


def test_hand_example_with_junk():
    # gallery sorted by distance: g0 (pid 1, cam 0 = junk for a cam-0 query), g1 (pid 2),
    # g2 (pid 1, cam 1), g3 (pid 3), g4 (pid 1, cam 2)
    dist = np.array([[0.1, 0.2, 0.3, 0.4, 0.5]])
    g_pids, g_cams = np.array([1, 2, 1, 3, 1]), np.array([0, 0, 1, 0, 2])
    cmc, ap, inp = evaluate_rank(dist, np.array([1]), g_pids, np.array([0]), g_cams, max_rank=4)
    # kept list: g1(neg) g2(pos, rank 2) g3(neg) g4(pos, rank 4)
    np.testing.assert_allclose(cmc, [0, 1, 1, 1])
    assert ap[0] == pytest.approx((1 / 2 + 2 / 4) / 2)
    assert inp[0] == pytest.approx(2 / 4)  # mINP: |G| / rank of the hardest match (Ye et al. Eq. 7)


def test_ties_count_against_the_true_match():
    dist = np.array([[0.5, 0.5]])
    cmc, ap, inp = evaluate_rank(dist, np.array([1]), np.array([2, 1]), np.array([0]),
                                 np.array([1, 1]), max_rank=2)
    np.testing.assert_allclose(cmc, [0, 1])
    assert ap[0] == pytest.approx(0.5)


def test_queries_without_match_are_skipped_and_all_missing_is_an_error():
    dist = np.array([[0.1, 0.2], [0.3, 0.1]])
    cmc, ap, _ = evaluate_rank(dist, np.array([1, 9]), np.array([1, 2]), np.array([0, 0]),
                               np.array([1, 1]))
    assert len(ap) == 1 and ap[0] == 1.0
    with pytest.raises(ValueError, match="No query has a true match"):
        evaluate_rank(dist, np.array([7, 9]), np.array([1, 2]), np.array([0, 0]), np.array([1, 1]))
    with pytest.raises(ValueError, match="gallery columns"):
        evaluate_rank(dist, np.array([1, 9]), np.array([1, 2, 3]), np.array([0, 0]),
                      np.array([1, 1]))


def test_evaluator_equals_fastreid_reid_evaluator(tmp_path):
    from fastreid.evaluation import ReidEvaluator
    cfg = make_cfg(CFG, ["TEST.METRIC", "euclidean"])
    rng = torch.Generator().manual_seed(0)
    feats = torch.randn(120, 32, generator=rng)
    pids = torch.randint(0, 12, (120,), generator=rng)
    cams = torch.randint(0, 5, (120,), generator=rng)
    ours = VehicleReidEvaluator(cfg, 40, str(tmp_path), dataset_name="Rand")
    ref = ReidEvaluator(cfg, 40)
    for ev in (ours, ref):
        ev.reset()
        for i in range(0, 120, 32):
            ev.process({"targets": pids[i:i + 32], "camids": cams[i:i + 32]}, feats[i:i + 32])
    got, exp = ours.evaluate(), ref.evaluate()
    for k in ("Rank-1", "Rank-5", "Rank-10", "mAP", "mINP"):
        assert got[k] == pytest.approx(exp[k], abs=1e-6), k
    saved = json.loads((tmp_path / "Rand_results.json").read_text())
    assert saved["mAP"] == pytest.approx(got["mAP"]) and saved["protocol"] == "standard"


def test_evaluator_rejects_non_feature_outputs():
    ev = VehicleReidEvaluator(make_cfg(CFG), 1)
    with pytest.raises(TypeError, match=r"\(B, D\)"):
        ev.process({"targets": torch.zeros(2), "camids": torch.zeros(2)}, {"loss": torch.zeros(())})


def test_metrics_are_percentages():
    dist = np.array([[0.1, 0.9], [0.9, 0.1]])
    res = metrics_from_distmat(dist, np.array([1, 2]), np.array([1, 2]), np.zeros(2), np.ones(2))
    assert (res["Rank-1"], res["mAP"], res["mINP"], res["metric"]) == (100, 100, 100, 100)


def _bench_eval_speed():
    import importlib.util
    import pathlib
    path = pathlib.Path(__file__).resolve().parents[1] / "bench" / "eval_speed.py"
    spec = importlib.util.spec_from_file_location("bench_eval_speed", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("seed", range(3))
def test_sort_free_count_of_the_benchmark_gives_the_same_metrics(seed):
    """bench/eval_speed.py's sort-free variant (issue 31 point 6) against FastReID and our ranker,
    with ties (distances on a coarse grid) and several query blocks."""
    bench = _bench_eval_speed()
    rng = np.random.default_rng(seed)
    nq, ng = 150, 240
    dist = np.round(rng.random((nq, ng)) * 10) / 10  # many ties
    q_pids, g_pids = rng.integers(0, 10, nq), rng.integers(0, 10, ng)
    q_cams, g_cams = rng.integers(0, 4, nq), rng.integers(0, 4, ng)
    cmc, ap, inp = bench.rank_by_count(dist, q_pids, g_pids, q_cams, g_cams, 20, chunk=64)
    ref = evaluate_rank(dist, q_pids, g_pids, q_cams, g_cams, max_rank=20)
    np.testing.assert_array_equal(cmc, ref[0])
    np.testing.assert_allclose(ap, ref[1], atol=1e-12)
    np.testing.assert_allclose(inp, ref[2], atol=1e-12)
    tie_free = rng.random((nq, ng))
    fr = evaluate_py(tie_free, q_pids, g_pids, q_cams, g_cams, 20, False)
    cmc, ap, inp = bench.rank_by_count(tie_free, q_pids, g_pids, q_cams, g_cams, 20, chunk=64)
    np.testing.assert_allclose(cmc, fr[0], atol=1e-7)
    np.testing.assert_allclose(ap, fr[1], atol=1e-12)
    np.testing.assert_allclose(inp, fr[2], atol=1e-12)
