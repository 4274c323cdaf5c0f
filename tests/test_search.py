"""Gallery search (``fastreid_plugins.tools.search``): the evaluator's ranking on the real VeRi
sample, approximate indexes against brute force (every index built by
``evaluation.knn.build_index``, the defaults ``PLUGIN_DEFAULTS``'), re-ranking, a 1,000,000-image
gallery in bounded memory, bad input (one ``Error:`` block of ``cli.run_cli``), and a module
import that loads no torch / faiss / numpy.

References are computed independently of the search code: FastReID's ``build_dist`` (what the
evaluator ranks with), the project's ``PluginTrainer.test`` metrics, and numpy brute force.
"""

import ast
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from fastreid.modeling import build_model
from fastreid.utils.compute_dist import build_dist

import fastreid_plugins  # noqa: F401
from fastreid_plugins.config import PLUGIN_DEFAULTS, get_cfg
from fastreid_plugins.engine import PluginTrainer, load_model_weights
from fastreid_plugins.errors import ConfigError, DatasetError, DatasetNotFoundError
from fastreid_plugins.evaluation import knn, metrics_from_distmat
from fastreid_plugins.tools import build_tool_cfg, extract, search
from fastreid_plugins.tools import visualize as vis
from tests.test_extract import ROOT, TIMEOUT, env, evaluator_features, models  # noqa: F401

SIZE = 64


def veri_labels(path):
    """(pid, camera) from a VeRi file name such as ``0002_c002_00030600_0.jpg``."""
    pid, cam = os.path.basename(path).split("_")[:2]
    return int(pid), int(cam[1:])


def labels(paths):
    lab = np.array([veri_labels(p) for p in paths])
    return lab[:, 0], lab[:, 1]


def dist_matrix(res, q_order, g_order):
    """(Q, G) distances in the given path orders from a search with topk = G."""
    qpos = {p: i for i, p in enumerate(q_order)}
    gpos = {p: j for j, p in enumerate(g_order)}
    d = np.full((len(q_order), len(g_order)), np.nan, np.float32)
    for qi, q in enumerate(res["query_paths"]):
        for r, g in enumerate(res["gallery_paths"][qi]):
            d[qpos[q], gpos[g]] = res["dist"][qi, r]
    assert not np.isnan(d).any()
    return d


def assert_same_ranking(order, ref, ref_rank, tie=1e-6):
    """``order`` (Q, G) is the evaluator's ranking ``ref_rank`` (stable argsort of its (Q, G)
    distances ``ref``) except where two gallery images are tied in float32: swapped neighbours
    must have reference distances within ``tie`` (the random demo models give near-collinear
    features: cosine distances ~3e-4, where 1 ulp of 1 - cos is 6e-8, and two images of one
    vehicle can be 1.6e-7 apart: faiss and FastReID's ``build_dist`` order them differently)."""
    swapped = order != ref_rank
    assert swapped.mean() < 0.05, f"{swapped.sum()} of {swapped.size} positions differ"
    np.testing.assert_allclose(np.take_along_axis(ref, order, 1),
                               np.take_along_axis(ref, ref_rank, 1), rtol=0, atol=tie)


def evaluator_metrics(cfg, weights, veri_root, datasets_root):
    datasets_root(veri_root)
    model = build_model(cfg)
    load_model_weights(model, weights)
    return PluginTrainer.test(cfg, model)


# ----------------------------------------------------------------------------- the evaluator
@pytest.mark.parametrize("name", ["bagtricks_r18", "mfgnet"])
def test_search_ranking_equals_evaluator(name, models, veri_root, datasets_root,  # noqa: F811
                                         tmp_path):
    cfg_path, weights, opts = models[name]
    cfg = build_tool_cfg(cfg_path, ["MODEL.WEIGHTS", weights, *opts])
    feats, paths, _, _, nq = evaluator_features(cfg, weights, veri_root, datasets_root)
    qf, gf, qp, gp = feats[:nq], feats[nq:], paths[:nq], paths[nq:]
    ref = build_dist(torch.from_numpy(qf), torch.from_numpy(gf), cfg.TEST.METRIC)
    ref_rank = np.argsort(ref, axis=1, kind="stable")
    # float32 resolution of the distances: 1 - cos is within [0, 2]; a squared L2 distance
    # |q|^2 + |g|^2 - 2 q.g carries the rounding of |q|^2 + |g|^2 (~1e4 for MFG-Net's features)
    scale = 1.0 if cfg.TEST.METRIC == "cosine" else float((qf ** 2).sum(1).max()
                                                          + (gf ** 2).sum(1).max())
    tie = 1e-6 if cfg.TEST.METRIC == "cosine" else 1e-5 * scale

    # (a) the evaluator's own features as a 3-shard gallery: same ranking, same distances
    gdir, qdir = str(tmp_path / "g"), str(tmp_path / "q")
    extract.save_feature_shards(gdir, [(gf[s:s + 10], gp[s:s + 10]) for s in (0, 10, 20)],
                                metric=cfg.TEST.METRIC)
    extract.save_feature_shards(qdir, [(qf, qp)], metric=cfg.TEST.METRIC)
    res = search.main(["--gallery", gdir, "--query", qdir, "--topk", str(len(gp)),
                       "--no-progress", "--output", str(tmp_path / "r.csv")])
    assert res["query_paths"] == qp
    order = np.array([[gp.index(g) for g in row] for row in res["gallery_paths"]])
    assert_same_ranking(order, ref, ref_rank, tie)
    np.testing.assert_allclose(res["dist"], np.take_along_axis(ref, ref_rank, 1),
                               atol=1e-5 * scale)
    with open(tmp_path / "r.csv") as f:
        rows = f.read().splitlines()
    assert rows[0] == "query,rank,gallery,distance" and len(rows) == 1 + len(qp) * len(gp)
    assert rows[1].split(",")[:3] == [qp[0], "1", gp[ref_rank[0, 0]]]

    # (b) end to end: extracted folders, queries as images extracted by the search itself
    ext_g = str(tmp_path / "ext_g")
    extract.main(["--config-file", cfg_path, "--images", os.path.join(veri_root, "veri",
                  "image_test"), "--out", ext_g, "--no-progress", "MODEL.WEIGHTS", weights,
                  *opts])
    res = search.main(["--gallery", ext_g, "--query", os.path.join(veri_root, "veri",
                       "image_query"), "--config-file", cfg_path, "--topk", "1000",
                       "--no-progress", "--output", str(tmp_path / "r.json"),
                       "MODEL.WEIGHTS", weights, *opts])
    d = dist_matrix(res, qp, gp)
    assert_same_ranking(np.argsort(d, axis=1, kind="stable"), ref, ref_rank, tie)
    np.testing.assert_allclose(d, ref, atol=1e-4 * scale)
    q_pids, q_cams = labels(qp)
    g_pids, g_cams = labels(gp)
    got = metrics_from_distmat(d, q_pids, g_pids, q_cams, g_cams)
    want = evaluator_metrics(cfg, weights, veri_root, datasets_root)
    for k in ("Rank-1", "Rank-5", "mAP", "mINP"):
        assert got[k] == pytest.approx(want[k], abs=1e-6), k
    with open(tmp_path / "r.json") as f:
        js = json.load(f)
    assert js["info"]["metric"] == cfg.TEST.METRIC and len(js["results"]) == len(qp)
    assert [r["gallery"] for r in js["results"][0]["ranking"]] == res["gallery_paths"][0]


def test_rerank_equals_evaluator(models, veri_root, datasets_root, tmp_path):  # noqa: F811
    """--rerank with every gallery image a candidate and one query block = the evaluator's
    TEST.RERANK (same K1/K2/LAMBDA, taken from the config stored in the manifest)."""
    cfg_path, weights, opts = models["bagtricks_r18"]
    opts = [*opts, "TEST.RERANK.ENABLED", "True", "TEST.RERANK.K1", "10", "TEST.RERANK.K2", "3"]
    cfg = build_tool_cfg(cfg_path, ["MODEL.WEIGHTS", weights, *opts])
    feats, paths, _, _, nq = evaluator_features(cfg, weights, veri_root, datasets_root)
    gdir, qdir = str(tmp_path / "g"), str(tmp_path / "q")
    rr = {"k1": 10, "k2": 3, "lambda": 0.3}
    extract.save_feature_shards(gdir, [(feats[nq:], paths[nq:])], rerank=rr)
    extract.save_feature_shards(qdir, [(feats[:nq], paths[:nq])])
    res = search.main(["--gallery", gdir, "--query", qdir, "--topk", "1000", "--rerank",
                       "--rerank-candidates", "1000", "--rerank-block", "1000", "--no-progress",
                       "--output", str(tmp_path / "r.json")])
    d = dist_matrix(res, paths[:nq], paths[nq:])
    q_pids, q_cams = labels(paths[:nq])
    g_pids, g_cams = labels(paths[nq:])
    got = metrics_from_distmat(d, q_pids, g_pids, q_cams, g_cams)
    want = evaluator_metrics(cfg, weights, veri_root, datasets_root)
    plain = metrics_from_distmat(build_dist(torch.from_numpy(feats[:nq]),
                                            torch.from_numpy(feats[nq:]), "cosine"),
                                 q_pids, g_pids, q_cams, g_cams)
    for k in ("Rank-1", "Rank-5", "mAP", "mINP"):
        assert got[k] == pytest.approx(want[k], abs=1e-6), k
    assert plain["mAP"] != pytest.approx(want["mAP"], abs=1e-3)  # re-ranking changed something


# ----------------------------------------------------------------------------- synthetic
def clustered(n, d, centers, seed, noise=0.3):
    rng = np.random.default_rng(seed)
    c = rng.standard_normal((centers, d)).astype(np.float32)
    return c[rng.integers(0, centers, n)] + noise * rng.standard_normal((n, d)).astype(np.float32)


def brute_force(q, g, k, metric):
    """Reference top-k (numpy float64): ascending distance, ties by lower gallery index."""
    q, g = q.astype(np.float64), g.astype(np.float64)
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
        g = g / np.linalg.norm(g, axis=1, keepdims=True)
        d = 1 - q @ g.T
    else:
        d = (q * q).sum(1)[:, None] + (g * g).sum(1)[None] - 2 * q @ g.T
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, 1), order


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_exact_search_shards_and_ties(metric, tmp_path):
    g = clustered(3000, 16, 30, seed=1)
    g[2500] = g[7]  # exact duplicates in another shard: ties, ordered by gallery index
    g[1200] = g[7]
    q = np.concatenate([g[[7, 100, 2999]], clustered(47, 16, 30, seed=2)])
    extract.save_feature_shards(str(tmp_path / "g"), [(g[s:s + 700], [f"g{i}" for i in range(
        s, min(s + 700, 3000))]) for s in range(0, 3000, 700)], metric=metric)
    store = search.FeatureStore(str(tmp_path / "g"))
    assert len(store) == 3000 and store.offsets == [0, 700, 1400, 2100, 2800]
    d, i = search.exact_search(store, q, 20)
    want_d, want_i = brute_force(q, g, 20, metric)
    assert i[0, :3].tolist() == [7, 1200, 2500]
    # the first rows are the planted ones; elsewhere float32 near-ties may swap neighbours
    assert (i == want_i).mean() > 0.99
    np.testing.assert_allclose(d, want_d, atol=1e-4)
    assert store.paths([2999, 0, 1401]) == ["g2999", "g0", "g1401"]


def test_approximate_index_recall_save_and_reload(tmp_path, capsys):
    g = clustered(20000, 32, 200, seed=3)
    q = clustered(300, 32, 200, seed=4)
    gdir, qdir = str(tmp_path / "g"), str(tmp_path / "q")
    extract.save_feature_shards(gdir, [(g[s:s + 5000], [f"g{i}" for i in range(s, s + 5000)])
                                       for s in range(0, 20000, 5000)])
    extract.save_feature_shards(qdir, [(q, [f"q{i}" for i in range(300)])])
    _, want = brute_force(q, g, 10, "cosine")

    # IVF-Flat searching every list: exact
    res = search.main(["--gallery", gdir, "--query", qdir, "--topk", "10", "--index-type",
                       "ivf-flat", "--nlist", "64", "--nprobe", "64", "--no-progress",
                       "--output", str(tmp_path / "flat.json")])
    assert res["info"]["factory"] == "IVF64,Flat" and res["info"]["recall_at_k"] == 1.0
    assert (res["index"] == want).mean() > 0.99

    # faiss's in-memory exact index by its factory string: exact, the gallery held in memory
    res = search.main(["--gallery", gdir, "--query", qdir, "--topk", "10", "--index-type", "Flat",
                       "--no-progress", "--output", str(tmp_path / "flat.csv")])
    assert res["info"]["recall_at_k"] == 1.0 and (res["index"] == want).mean() > 0.99

    # IVF-PQ probing 4 of 64 lists: approximate; the printed recall@10 is the true one
    index_path = str(tmp_path / "pq.faiss")
    args = ["--gallery", gdir, "--query", qdir, "--topk", "10", "--index-type", "ivf-pq",
            "--nlist", "64", "--nprobe", "4", "--pq-m", "16", "--index", index_path,
            "--recall-sample", "300",
            "--no-progress", "--output", str(tmp_path / "pq.json")]
    capsys.readouterr()
    res = search.main(args)
    err = capsys.readouterr().err
    assert res["info"]["factory"] == "IVF64,PQ16"
    true_recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(res["index"], want)])
    assert res["info"]["recall_at_k"] == pytest.approx(true_recall, abs=1e-9)
    assert f"recall@10 of IVF64,PQ16 (nprobe 4) vs exact search on 300 queries: " \
           f"{true_recall:.4f}" in err
    assert 0.3 < true_recall < 1.0
    with open(tmp_path / "pq.json") as f:
        assert json.load(f)["info"]["recall_at_k"] == pytest.approx(true_recall)
    assert os.path.isfile(index_path) and os.path.isfile(index_path + ".json")

    # reloaded, not rebuilt: same results; an index of another gallery is refused
    mtime = os.stat(index_path).st_mtime_ns
    again = search.main(args)
    assert os.stat(index_path).st_mtime_ns == mtime
    assert np.array_equal(again["index"], res["index"])
    other = str(tmp_path / "other")
    extract.save_feature_shards(other, [(g[:8000], [f"g{i}" for i in range(8000)])])
    with pytest.raises(DatasetError, match="pq.faiss"):
        search.main(["--gallery", other, *args[2:]])


_RSS_SCRIPT = """
import json, resource, sys
import faiss, torch
import fastreid_plugins.evaluation.knn, fastreid_plugins.evaluation.sparse_rerank
from fastreid_plugins.tools import search

def status(key):
    with open("/proc/self/status") as f:
        return int(f.read().split(key + ":")[1].split()[0]) * 1024

base = status("VmRSS")  # after importing torch, FastReID, faiss
res = search.main(sys.argv[1:])
print(json.dumps({"base": base, "peak": status("VmHWM"), "top1": res["index"][:, 0].tolist(),
                  "search_s": res["info"]["search_s"]}))
"""


@pytest.mark.slow
def test_search_1m_gallery_bounded_memory(tmp_path):
    """1,000,000 x 256 gallery (100 float16 shards; 977 MiB as float32), 100 queries, exact
    top-10. Measured (2 shared CPU cores, FASTREID_PLUGINS_THREADS=1): peak RSS 817 MiB, of which
    782 MiB is the process after its imports (torch, FastReID, faiss): the search adds ~35 MiB
    (one shard and its faiss copy), it never holds the gallery; search 4-9 s, test ~20 s. Each
    query is a gallery row plus noise and must find that row first."""
    n, d, shard = 1_000_000, 256, 10_000
    planted = np.arange(100) * 9_973 + 17  # spread over the shards
    queries = []

    def shards():
        for s in range(0, n, shard):
            x = np.random.default_rng(s).standard_normal((shard, d), dtype=np.float32)
            for p in planted[(planted >= s) & (planted < s + shard)]:
                queries.append(x[p - s] + 0.05 * np.random.default_rng(int(p)).standard_normal(
                    d, dtype=np.float32))
            yield x.astype(np.float16), [f"img{i:07d}.jpg" for i in range(s, s + shard)]

    gdir, qdir = str(tmp_path / "g"), str(tmp_path / "q")
    extract.save_feature_shards(gdir, shards(), dtype="float16")
    extract.save_feature_shards(qdir, [(np.stack(queries), [f"q{i}" for i in range(100)])])
    res = subprocess.run([sys.executable, "-c", _RSS_SCRIPT, "--gallery", gdir, "--query", qdir,
                          "--topk", "10", "--no-progress", "--output",
                          str(tmp_path / "r.csv")], cwd=ROOT, env=env(), capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout.strip().splitlines()[-1])
    print(f"peak RSS {out['peak'] / 2**20:.0f} MiB, after imports {out['base'] / 2**20:.0f} "
          f"MiB, search {out['search_s']:.1f} s")
    assert out["top1"] == planted.tolist()
    gallery_f32 = n * d * 4
    # the gallery is never held: the search adds < 20 % of its float32 size (< its float16 size)
    assert out["peak"] - out["base"] < 0.2 * gallery_f32


# ----------------------------------------------------------------------------- pictures
def test_rank_list_pictures(tmp_path, veri_root):
    veri = os.path.join(veri_root, "veri")
    gp = sorted(extract.iter_image_paths(os.path.join(veri, "image_test")))
    qp = sorted(extract.iter_image_paths(os.path.join(veri, "image_query")))
    rng = np.random.default_rng(0)
    gdir, qdir = str(tmp_path / "g"), str(tmp_path / "q")
    extract.save_feature_shards(gdir, [(rng.standard_normal((len(gp), 8)), gp)],
                                input_size=[SIZE, SIZE])
    extract.save_feature_shards(qdir, [(rng.standard_normal((len(qp), 8)), qp)])
    out = str(tmp_path / "vis")
    res = search.main(["--gallery", gdir, "--query", qdir, "--topk", "4", "--vis", "2",
                       "--vis-queries", os.path.basename(qp[5]), "--vis-dir", out,
                       "--no-progress", "--output", str(tmp_path / "r.csv")])
    assert len(res["vis"]) == 3 and sorted(os.listdir(out)) == sorted(
        os.path.basename(f) for f in res["vis"])
    from PIL import Image

    img = np.asarray(Image.open(res["vis"][2]).convert("RGB"))
    assert img.shape[:2] == vis.canvas_size(4, SIZE, SIZE)[::-1]
    assert os.path.splitext(os.path.basename(qp[5]))[0] in os.path.basename(res["vis"][2])
    cw = SIZE + 2 * vis.BORDER
    x0 = vis.PAD + cw + vis.QUERY_GAP
    for r in range(4):  # every gallery border is grey (no labels), the query's blue
        x = x0 + r * (cw + vis.GAP)
        assert tuple(img[vis.PAD + 1, x + cw // 2]) == search.UNLABELLED_COLOR
        assert tuple(img[vis.PAD + cw // 2, x + 1]) == search.UNLABELLED_COLOR
    assert tuple(img[vis.PAD + 1, vis.PAD + cw // 2]) == vis.QUERY_COLOR
    with pytest.raises(DatasetError, match="nope.jpg"):
        search.main(["--gallery", gdir, "--query", qdir, "--vis-queries", "nope.jpg",
                     "--no-progress", "--output", str(tmp_path / "r.csv")])


# ----------------------------------------------------------------------------- bad input
def test_bad_input_errors(tmp_path):
    rng = np.random.default_rng(0)
    g8, g16 = str(tmp_path / "g8"), str(tmp_path / "g16")
    extract.save_feature_shards(g8, [(rng.standard_normal((5, 8)), list("abcde"))])
    extract.save_feature_shards(g16, [(rng.standard_normal((5, 16)), list("abcde"))])
    eu = str(tmp_path / "eu")
    extract.save_feature_shards(eu, [(rng.standard_normal((5, 8)), list("abcde"))],
                                metric="euclidean")
    missing = str(tmp_path / "missing_gallery")
    with pytest.raises(DatasetNotFoundError, match="missing_gallery"):
        search.main(["--gallery", missing, "--query", g8])
    with pytest.raises(DatasetNotFoundError, match="missing_query"):
        search.main(["--gallery", g8, "--query", str(tmp_path / "missing_query")])
    with pytest.raises(DatasetError, match="dimension") as e:
        search.main(["--gallery", g8, "--query", g16, "--no-progress"])
    assert os.path.join(g8, "manifest.json") in str(e.value) and g16 in str(e.value)
    with pytest.raises(DatasetError, match="Metric mismatch"):
        search.main(["--gallery", g8, "--query", eu, "--no-progress"])
    plain = tmp_path / "plain_dir"
    plain.mkdir()
    with pytest.raises(DatasetNotFoundError, match="manifest.json"):
        search.main(["--gallery", str(plain), "--query", g8])
    empty = tmp_path / "empty.txt"
    empty.write_text("\n")
    with pytest.raises(DatasetError, match="empty.txt"):
        search.main(["--gallery", g8, "--query", str(empty), "--config-file", "x.yml"])
    imgs = tmp_path / "imgs"
    imgs.mkdir()
    (imgs / "a.jpg").write_bytes(b"")
    with pytest.raises(ConfigError, match="--config-file"):
        search.main(["--gallery", g8, "--query", str(imgs)])
    with pytest.raises(ConfigError, match="out.txt"):
        search.main(["--gallery", g8, "--query", g8, "--output", str(tmp_path / "out.txt"),
                     "--no-progress"])
    with pytest.raises(ConfigError, match="--topk"):
        search.main(["--gallery", g8, "--query", g8, "--topk", "0"])
    with pytest.raises(ConfigError, match="index_factory"):
        search.main(["--gallery", g8, "--query", g8, "--index-type", "NoSuchIndex,Foo",
                     "--no-progress"])
    # a corrupt manifest
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "manifest.json").write_text("{not json")
    with pytest.raises(DatasetError, match="manifest"):
        search.main(["--gallery", str(bad), "--query", g8])
    with pytest.raises(ConfigError, match="500 IVF lists"):
        search.main(["--gallery", g8, "--query", g8, "--index-type", "ivf-flat", "--nlist", "500",
                     "--no-progress"])
    # the CLI (cli.run_cli): one Error block, exit status 2, no traceback; --debug: the traceback
    cmd = [sys.executable, "-m", "fastreid_plugins.tools.search", "--gallery", g8, "--query", g16]
    res = subprocess.run(cmd, cwd=ROOT, env=env(), capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert res.stderr.startswith("Error: Feature dimension mismatch")
    assert "(DatasetError; rerun with --debug for the traceback)" in res.stderr
    res = subprocess.run(cmd + ["--debug"], cwd=ROOT, env=env(), capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert res.returncode == 1 and "Traceback" in res.stderr and "DatasetError" in res.stderr


# ----------------------------------------------------------------------------- one k-NN stack
def test_cli_defaults_are_the_plugin_defaults(monkeypatch):
    """--index-type / --nlist / --nprobe / --ef-search default to the re-ranker's
    TEST.RERANK.KNN* defaults, read from PLUGIN_DEFAULTS (not repeated)."""
    base = ["--gallery", "g", "--query", "q"]
    args = search.build_parser().parse_args(base)
    assert (args.index_type, args.nlist, args.nprobe, args.ef_search) == (
        PLUGIN_DEFAULTS["TEST.RERANK.KNN"], PLUGIN_DEFAULTS["TEST.RERANK.KNN_NLIST"],
        PLUGIN_DEFAULTS["TEST.RERANK.KNN_NPROBE"], PLUGIN_DEFAULTS["TEST.RERANK.KNN_EF_SEARCH"])
    for key, value in (("KNN", "hnsw"), ("KNN_NLIST", 5), ("KNN_NPROBE", 3),
                       ("KNN_EF_SEARCH", 99)):
        monkeypatch.setitem(PLUGIN_DEFAULTS, f"TEST.RERANK.{key}", value)
    args = search.build_parser().parse_args(base)
    assert (args.index_type, args.nlist, args.nprobe, args.ef_search) == ("hnsw", 5, 3, 99)


def test_every_index_is_built_by_knn_build_index(monkeypatch, tmp_path, capsys):
    g = clustered(6000, 16, 60, seed=7)
    q = clustered(80, 16, 60, seed=8)
    gdir, qdir = str(tmp_path / "g"), str(tmp_path / "q")
    extract.save_feature_shards(gdir, [(g[s:s + 2000], [f"g{i}" for i in range(s, s + 2000)])
                                       for s in range(0, 6000, 2000)])
    extract.save_feature_shards(qdir, [(q, [f"q{i}" for i in range(80)])])
    calls = []
    real = knn.build_index

    def spy(vectors, kind="exact", *args, **kwargs):
        calls.append((kind, len(vectors)))
        return real(vectors, kind, *args, **kwargs)

    monkeypatch.setattr(knn, "build_index", spy)
    base = ["--gallery", gdir, "--query", qdir, "--topk", "5", "--no-progress", "--output",
            str(tmp_path / "r.json")]
    _, want = brute_force(q, g, 5, "cosine")
    res = search.main(base)  # exact: one flat index per shard
    assert calls == [("exact", 2000)] * 3 and (res["index"] == want).mean() > 0.99
    nlist = knn.default_nlist(6000)
    for kind, factory, param in (("ivf", f"IVF{nlist},SQ8", "nprobe"),
                                 ("hnsw", "HNSW32,SQ8", "ef search")):
        calls.clear()
        capsys.readouterr()
        res = search.main([*base, "--index-type", kind])
        # the index, then the exact search of the recall check (one flat index per shard)
        assert calls == [(factory, 6000)] + [("exact", 2000)] * 3
        assert res["info"]["factory"] == factory
        value = res["info"].get("nprobe", res["info"].get("ef_search"))
        # the defaults (nprobe capped at nlist): PLUGIN_DEFAULTS', as the re-ranker's k-NN
        assert value == (min(PLUGIN_DEFAULTS["TEST.RERANK.KNN_NPROBE"], nlist) if kind == "ivf"
                         else PLUGIN_DEFAULTS["TEST.RERANK.KNN_EF_SEARCH"])
        true_recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(res["index"], want)])
        assert res["info"]["recall_at_k"] == pytest.approx(true_recall, abs=1e-9)
        assert (f"recall@5 of {factory} ({param} {value}) vs exact search on 80 queries: "
                f"{true_recall:.4f}") in capsys.readouterr().err


def test_rerank_defaults_are_the_configs(monkeypatch, tmp_path):
    """A gallery manifest without ``rerank`` (save_feature_shards) is re-ranked with the default
    config's TEST.RERANK.K1/K2/LAMBDA (the keys the evaluator reads)."""
    g = clustered(300, 8, 10, seed=9)
    gdir = str(tmp_path / "g")
    extract.save_feature_shards(gdir, [(g, [f"g{i}" for i in range(300)])])
    store = search.FeatureStore(gdir)
    q = g[:12] + 0.01
    rr = get_cfg().TEST.RERANK
    dist, index, info = search.search(store, q, 5, rerank=True, rerank_candidates=40)
    assert info["rerank"] == {"k1": rr.K1, "k2": rr.K2, "lambda": rr.LAMBDA, "candidates": 40,
                              "block": search.RERANK_BLOCK}
    d, i = search.exact_search(store, q, 40)
    want = search.rerank_topk(store, q, d, i, 5, rr.K1, rr.K2, rr.LAMBDA)
    np.testing.assert_array_equal(index, want[1])
    other = search.rerank_topk(store, q, d, i, 5, 3, 1, 0.9)
    assert not np.array_equal(other[0], want[0])  # the values matter: a real default was used


def _top_level_imports(path):
    """Modules imported at module level, outside ``if TYPE_CHECKING:`` and the ``__main__``
    block."""
    out = []
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    for node in tree.body:
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append(node.module if not node.level else "." * node.level + (node.module or ""))
        elif isinstance(node, (ast.If, ast.Try, ast.With)):
            assert not any(isinstance(n, (ast.Import, ast.ImportFrom)) for n in ast.walk(node)
                           ) or isinstance(node, ast.If) and ast.unparse(node.test) in (
                "TYPE_CHECKING", "__name__ == '__main__'"), ast.unparse(node)[:80]
    return out


#: what the two command modules may import at module level besides the standard library
LIGHT = {"__future__", "fastreid_plugins.errors", "fastreid_plugins.tools.extract"}


@pytest.mark.parametrize("name", ["extract", "search"])
def test_command_modules_import_nothing_heavy(name):
    path = os.path.join(ROOT, "fastreid_plugins", "tools", f"{name}.py")
    mods = _top_level_imports(path)
    assert "argparse" in mods  # the walk saw the imports
    heavy = [m for m in mods
             if m.split(".")[0] not in sys.stdlib_module_names and m not in LIGHT]
    assert not heavy, f"{path} imports {heavy} at module level: import them where used"
    # and what importing it (and building its parser) loads beyond the package root
    code = ("import sys, fastreid_plugins, fastreid_plugins.tools; before = set(sys.modules); "
            f"import fastreid_plugins.tools.{name} as m; m.build_parser(); "
            "print(' '.join(sorted(set(sys.modules) - before)))")
    res = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env(), capture_output=True,
                         text=True, timeout=TIMEOUT)
    assert res.returncode == 0, res.stderr[-2000:]
    new = res.stdout.split()
    assert f"fastreid_plugins.tools.{name}" in new
    assert not [m for m in new if m.split(".")[0] in ("torch", "faiss", "numpy", "PIL", "cv2")
                or m.startswith(("fastreid.modeling", "fastreid.data", "fastreid.engine"))], new
