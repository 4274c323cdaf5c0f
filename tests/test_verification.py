"""Verification metrics (ROC, TAR@FAR, EER, AUC): exact and histogram modes against sklearn."""

import json
import os

import numpy as np
import pytest
import torch

from fastreid_plugins.evaluation.chunked import evaluate_chunked
from fastreid_plugins.evaluation.verification import (
    FARS,
    PairHistogram,
    distance_range,
    plot_verification,
)

sk = pytest.importorskip("sklearn.metrics")
interp = pytest.importorskip("scipy.interpolate")
optimize = pytest.importorskip("scipy.optimize")


def _data(seed=0, nq=60, ng=300, n_id=40, d=16, ties=False):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_id, d))
    q_pids = rng.integers(0, n_id, nq)
    g_pids = rng.integers(0, n_id, ng)
    qf = centers[q_pids] + 0.9 * rng.normal(size=(nq, d))
    gf = centers[g_pids] + 0.9 * rng.normal(size=(ng, d))
    if ties:  # coarse features: many equal distances
        qf, gf = np.round(qf), np.round(gf)
    return (torch.tensor(qf, dtype=torch.float32), torch.tensor(gf, dtype=torch.float32),
            q_pids, g_pids, rng.integers(0, 4, nq), rng.integers(0, 4, ng))


def _reference_pairs(qf, gf, q_pids, g_pids, q_camids, g_camids, metric):
    """Labels and distances of every kept pair, from a full matrix (independent of the
    streamed code)."""
    if metric == "cosine":
        qn = torch.nn.functional.normalize(qf, dim=1).double()
        gn = torch.nn.functional.normalize(gf, dim=1).double()
        dist = (1 - qn @ gn.t()).numpy()
    else:
        dist = torch.cdist(qf.double(), gf.double()).pow(2).numpy()
    same = q_pids[:, None] == g_pids[None, :]
    junk = same & (q_camids[:, None] == g_camids[None, :])
    keep = ~junk
    return same[keep].astype(int), dist[keep]


def _sk_reference(y, d):
    fpr, tpr, thr = sk.roc_curve(y, -d, drop_intermediate=False)
    tar = {f: float(tpr[fpr <= f].max()) for f in FARS}
    # the usual EER recipe (brentq on the interpolated ROC)
    eer = optimize.brentq(lambda x: 1.0 - x - interp.interp1d(fpr, tpr)(x), 0.0, 1.0)
    return tar, float(eer), float(sk.auc(fpr, tpr)), float(sk.roc_auc_score(y, -d))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
@pytest.mark.parametrize("ties", [False, True])
def test_exact_matches_sklearn(metric, ties):
    qf, gf, qp, gp, qc, gc = _data(ties=ties)
    res = evaluate_chunked(qf, gf, qp, gp, qc, gc, metric=metric, memory_gb=1e-4,
                           verification={"n_bins": 1000, "exact_pairs": 10 ** 9})
    h = res["verification"][metric]
    assert h.exact and res["chunk"] < len(qf)  # several query blocks
    s = h.summary()
    y, d = _reference_pairs(qf, gf, qp, gp, qc, gc, metric)
    assert s["num_pos"] == y.sum() and s["num_neg"] == (1 - y).sum()
    tar, eer, auc, auc2 = _sk_reference(y, d)
    for f in FARS:
        assert s["tar_at_far"][f] == pytest.approx(tar[f], abs=1e-12)
        # the reported threshold gives that TAR and a FAR <= f on the pairs
        t = s["threshold_at_far"][f]
        if np.isfinite(t):  # float32 vs float64 distances: a relative tolerance
            eps = 1e-5 * max(1.0, abs(t))
            assert (d[y == 1] <= t + eps).mean() >= tar[f] - 1e-9
            assert (d[y == 1] <= t - eps).mean() <= tar[f] + 1e-9
            assert (d[y == 0] <= t - eps).mean() <= f
    # float32 distances vs the float64 reference: ties may split differently at ~1e-7
    assert s["auc"] == pytest.approx(auc, abs=1e-4)
    assert s["auc"] == pytest.approx(auc2, abs=1e-4)
    assert s["eer"] == pytest.approx(eer, abs=2e-3)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_histogram_within_bin_error(metric):
    """Histogram mode vs sklearn on the same pairs: the tolerance follows from the bin width w:
    TAR@FAR within the positives' share in the w-window below the exact threshold plus the
    negatives' share in one bin (the bin that may cross f); AUC within sum pos_k neg_k / (P N)."""
    qf, gf, qp, gp, qc, gc = _data(seed=1, nq=80, ng=400)
    n_bins = 512
    res = evaluate_chunked(qf, gf, qp, gp, qc, gc, metric=metric, memory_gb=1e-4,
                           verification={"n_bins": n_bins, "exact_pairs": 0})
    h = res["verification"][metric]
    assert not h.exact
    lo, hi = distance_range(metric, float(qf.norm(dim=1).max()), float(gf.norm(dim=1).max()))
    assert (h.lo, h.hi) == (lo, hi)
    w = (hi - lo) / n_bins
    s = h.summary()
    assert s["bin_width"] == pytest.approx(w)
    y, d = _reference_pairs(qf, gf, qp, gp, qc, gc, metric)
    tar, eer, auc, _ = _sk_reference(y, d)
    pos, neg = np.sort(d[y == 1]), np.sort(d[y == 0])
    for f in FARS:
        k = int(np.floor(f * len(neg)))  # exact threshold: below the (k+1)-th negative
        t_exact = neg[k] if k < len(neg) else np.inf
        window = ((pos > t_exact - 2 * w) & (pos <= t_exact)).mean()
        assert s["tar_at_far"][f] <= tar[f] + 1e-12  # never optimistic: its FAR is <= f
        assert s["tar_at_far"][f] >= tar[f] - window - 1e-12
    # AUC bound: pairs of a bin counted half
    pb = np.bincount(np.clip(((pos - lo) / w).astype(int), 0, n_bins - 1), minlength=n_bins)
    nb = np.bincount(np.clip(((neg - lo) / w).astype(int), 0, n_bins - 1), minlength=n_bins)
    bound = (pb * nb).sum() / (len(pos) * len(neg)) / 2 + 1e-6
    assert abs(s["auc"] - auc) <= bound
    assert abs(s["eer"] - eer) <= 0.01 + 2 * w  # interpolated within one bin around the crossing


def test_histogram_counts_and_merge():
    """Hand-made pairs: 2 queries x 4 gallery items, junk removed."""
    d = np.array([[0.1, 0.5, 0.9, 1.5], [0.2, 0.3, 1.9, 2.5]], np.float32)
    q_pids, g_pids = np.array([1, 2]), np.array([1, 1, 2, 3])
    q_cams, g_cams = np.array([0, 0]), np.array([0, 1, 1, 1])
    h = PairHistogram(0.0, 2.0, n_bins=4, exact=True)
    h.add(d, q_pids, g_pids, q_cams, g_cams)
    # query 0: g0 junk (pid 1, cam 0), g1 positive (0.5), g2/g3 negative (0.9, 1.5)
    # query 1: g2 positive (1.9), g0/g1/g3 negative (0.2, 0.3, 2.5 -> clipped to the last bin)
    assert h.pos.tolist() == [0, 1, 0, 1]
    assert h.neg.tolist() == [2, 1, 0, 2]  # bins [0, .5) [.5, 1) [1, 1.5) [1.5, 2]
    pd, nd = h.distances()
    assert sorted(pd.round(6)) == [0.5, 1.9]
    assert sorted(nd.round(6)) == [0.2, 0.3, 0.9, 1.5, 2.5]
    far, tar, thr = h.roc()
    # exact: thresholds 0.2 0.3 0.5 0.9 1.5 1.9 2.5
    assert tar.tolist() == [0, 0, 0, .5, .5, .5, 1, 1]
    assert far.tolist() == [0, .2, .4, .4, .6, .8, .8, 1]
    s = h.summary(fars=(0.5,))
    # the last point with FAR <= .5 is threshold 0.5 (0.9 gives FAR .6)
    assert s["tar_at_far"][0.5] == 0.5 and s["threshold_at_far"][0.5] == pytest.approx(0.5)
    # AUC by hand: FAR .4-.8 at TAR .5, .8-1 at TAR 1: 0.4 * 0.5 + 0.2 * 1 = 0.4
    assert s["auc"] == pytest.approx(0.4)
    h2 = PairHistogram(0.0, 2.0, n_bins=4, exact=False)
    h2.add(d, q_pids, g_pids, q_cams, g_cams)
    h2.merge(PairHistogram(0.0, 2.0, n_bins=4))
    assert h2.num_pos == 2 and h2.num_neg == 5
    with pytest.raises(ValueError, match="different ranges"):
        h2.merge(PairHistogram(0.0, 1.0, n_bins=4))
    with pytest.raises(ValueError, match="positive and negative"):
        PairHistogram(0.0, 1.0, n_bins=4).roc()


def test_rerank_and_both_metrics():
    qf, gf, qp, gp, qc, gc = _data(seed=2, nq=30, ng=120)
    res = evaluate_chunked(qf, gf, qp, gp, qc, gc, metric="cosine",
                           rerank={"k1": 6, "k2": 3, "lambda_value": 0.3}, memory_gb=1e-4,
                           verification={"n_bins": 256, "exact_pairs": 10 ** 9,
                                         "both_metrics": True})
    assert set(res["verification"]) == {"cosine", "euclidean", "cosine+rerank"}
    y, d = _reference_pairs(qf, gf, qp, gp, qc, gc, "euclidean")
    s = res["verification"]["euclidean"].summary()
    assert s["auc"] == pytest.approx(sk.roc_auc_score(y, -d), abs=1e-4)
    rr = res["verification"]["cosine+rerank"].summary()
    assert rr["num_pos"] == s["num_pos"] and 0.5 < rr["auc"] <= 1


def test_plot(tmp_path):
    qf, gf, qp, gp, qc, gc = _data(seed=3)
    h = evaluate_chunked(qf, gf, qp, gp, qc, gc, verification={"n_bins": 4096})["verification"]
    s = h["cosine"].summary()
    path = plot_verification(h["cosine"], s, str(tmp_path / "v.png"), "toy")
    from PIL import Image

    assert Image.open(path).size[0] > 500
    json.dumps({str(k): v for k, v in s["tar_at_far"].items()})
    assert os.path.getsize(path) > 10_000


def _run_evaluator(tmp_path, overrides, protocol="standard", num_query=40, name="Rand"):
    from helpers import make_cfg

    from fastreid_plugins.evaluation import VehicleReidEvaluator

    cfg = make_cfg("configs/demo/bagtricks_r18.yml", overrides)
    rng = torch.Generator().manual_seed(0)
    feats = torch.randn(120, 16, generator=rng)
    pids = torch.randint(0, 12, (120,), generator=rng)
    cams = torch.randint(0, 5, (120,), generator=rng)
    ev = VehicleReidEvaluator(cfg, num_query, str(tmp_path), dataset_name=name, protocol=protocol)
    ev.reset()
    for i in range(0, 120, 32):
        ev.process({"targets": pids[i:i + 32], "camids": cams[i:i + 32]}, feats[i:i + 32])
    return ev.evaluate(), feats, pids.numpy(), cams.numpy()


def test_evaluator_off_by_default(tmp_path):
    res, *_ = _run_evaluator(tmp_path, [])
    assert "AUC" not in res and not list(tmp_path.glob("*verification*.png"))
    assert "verification" not in json.loads((tmp_path / "Rand_results.json").read_text())


def test_evaluator_standard_protocol(tmp_path):
    res, feats, pids, cams = _run_evaluator(
        tmp_path, ["TEST.VERIFICATION.ENABLED", True, "TEST.VERIFICATION.BOTH_METRICS", True])
    for k in ("TAR@1e-2", "TAR@1e-3", "TAR@1e-4", "EER", "AUC", "Rank-1", "mAP"):
        assert k in res and 0 <= res[k] <= 100, k
    y, d = _reference_pairs(feats[:40], feats[40:], pids[:40], pids[40:], cams[:40], cams[40:],
                            "cosine")
    assert res["AUC"] == pytest.approx(100 * sk.roc_auc_score(y, -d), abs=1e-2)
    saved = json.loads((tmp_path / "Rand_results.json").read_text())
    assert set(saved["verification"]) == {"cosine", "euclidean"}
    assert saved["verification"]["cosine"]["exact"] is True
    assert saved["AUC"] == pytest.approx(res["AUC"])
    assert (tmp_path / "Rand_verification.png").is_file()
    assert (tmp_path / "Rand_verification_euclidean.png").is_file()


def test_evaluator_vehicleid_pools_the_trials(tmp_path):
    from fastreid_plugins.evaluation import vehicleid_split

    res, feats, pids, _ = _run_evaluator(
        tmp_path, ["TEST.VERIFICATION.ENABLED", True, "TEST.VEHICLEID.NUM_TRIALS", 3,
                   "TEST.METRIC", "euclidean"], protocol="vehicleid", num_query=0, name="VID")
    ys, ds = [], []
    for t in range(3):  # the evaluator's seeded draws; no junk (each image its own camera)
        q, g = vehicleid_split(pids, np.random.default_rng(t))
        y, d = _reference_pairs(feats[q], feats[g], pids[q], pids[g], np.zeros(len(q)),
                                np.ones(len(g)), "euclidean")
        ys.append(y)
        ds.append(d)
    y, d = np.concatenate(ys), np.concatenate(ds)
    assert res["AUC"] == pytest.approx(100 * sk.roc_auc_score(y, -d), abs=1e-2)
    saved = json.loads((tmp_path / "VID_results.json").read_text())
    assert saved["verification"]["euclidean"]["num_pos"] == y.sum()


def test_evaluator_with_rerank(tmp_path):
    res, *_ = _run_evaluator(tmp_path, ["TEST.VERIFICATION.ENABLED", True,
                                        "TEST.RERANK.ENABLED", True, "TEST.RERANK.K1", 6,
                                        "TEST.RERANK.K2", 3])
    saved = json.loads((tmp_path / "Rand_results.json").read_text())
    assert set(saved["verification"]) == {"cosine", "cosine+rerank"}
    assert res["AUC"] == pytest.approx(100 * saved["verification"]["cosine+rerank"]["auc"])
    assert (tmp_path / "Rand_verification.png").is_file()  # the re-ranked one: the run's
    assert (tmp_path / "Rand_verification_cosine.png").is_file()


def test_rank_block_counts_the_same_pairs_in_its_pass():
    """rank_block(..., pairs=[h]) fills h as PairHistogram.add does (same index lists)."""
    from fastreid_plugins.evaluation.rank import rank_block

    qf, gf, qp, gp, qc, gc = _data(seed=5, nq=20, ng=90)
    d = (1 - torch.nn.functional.normalize(qf, dim=1) @ torch.nn.functional.normalize(gf, dim=1)
         .t()).numpy()
    a = PairHistogram(0.0, 2.0, 64, exact=True)
    b = PairHistogram(0.0, 2.0, 64, exact=True)
    a.add(d, qp, gp, qc, gc)
    ranks = rank_block(d, qp, gp, qc, gc, pairs=[b])
    assert a.pos.tolist() == b.pos.tolist() and a.neg.tolist() == b.neg.tolist()
    for x, y in zip(a.distances(), b.distances()):
        assert sorted(x) == sorted(y)
    for x, y in zip(ranks, rank_block(d, qp, gp, qc, gc)):
        np.testing.assert_array_equal(x, y)


def test_picture_into_the_event_storage(tmp_path):
    """During training (an EventStorage is active) the picture also goes to tensorboard."""
    from fastreid.utils.events import EventStorage

    with EventStorage(0) as storage:
        _run_evaluator(tmp_path, ["TEST.VERIFICATION.ENABLED", True])
    names = [n for n, img, _ in storage._vis_data]
    assert names == ["Rand/verification"]
    img = storage._vis_data[0][1]
    assert img.shape[0] == 3 and img.dtype == np.uint8 and img.shape[2] > 500


def test_evaluator_dense_fastreid_rerank(tmp_path):
    """TEST.RERANK.TYPE fastreid (the dense full-matrix path): verification of its re-ranked
    matrix, against sklearn on FastReID's own re-ranked distances."""
    from fastreid_plugins.evaluation import VehicleReidEvaluator

    res, feats, pids, cams = _run_evaluator(
        tmp_path, ["TEST.VERIFICATION.ENABLED", True, "TEST.RERANK.ENABLED", True,
                   "TEST.RERANK.TYPE", "fastreid", "TEST.RERANK.K1", 6, "TEST.RERANK.K2", 3])
    saved = json.loads((tmp_path / "Rand_results.json").read_text())
    assert set(saved["verification"]) == {"cosine+rerank"}
    ev = VehicleReidEvaluator.__new__(VehicleReidEvaluator)
    from helpers import make_cfg

    ev.cfg = make_cfg("configs/demo/bagtricks_r18.yml",
                      ["TEST.RERANK.ENABLED", True, "TEST.RERANK.TYPE", "fastreid",
                       "TEST.RERANK.K1", 6, "TEST.RERANK.K2", 3])
    dist = np.asarray(ev._distance(feats[:40], feats[40:]))
    same = pids[:40, None] == pids[None, 40:]
    keep = ~(same & (cams[:40, None] == cams[None, 40:]))
    auc = sk.roc_auc_score(same[keep].astype(int), -dist[keep])
    assert res["AUC"] == pytest.approx(100 * auc, abs=1e-3)
