"""The vector gallery (issue 29): Qdrant collections of extracted features, searched with the
evaluator's distances and payload filters; idempotent, crash-safe ingest; clear bad-input errors.

Run against Qdrant's embedded local mode only (no server here): a URL test checks that an
unreachable server is reported quickly.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("qdrant_client")

from fastreid_plugins.errors import ConfigError, DatasetError  # noqa: E402
from fastreid_plugins.gallery import (  # noqa: E402
    VectorGallery,
    image_payload,
    parse_veri_name,
    point_id,
    read_metadata_csv,
)
from fastreid_plugins.tools import gallery as tool  # noqa: E402
from fastreid_plugins.tools.extract import save_feature_shards  # noqa: E402
from fastreid_plugins.tools.search import FeatureStore, exact_search  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHA_A, SHA_B = "a" * 64, "b" * 64
VERI_TEST = os.path.join(os.environ.get("FASTREID_DATASETS", "/nonexistent"), "veri", "image_test")


def names(n, seed=0):
    """VeRi-style names: pid i % 7, camera c000..c004, time 100 i."""
    return [f"{i % 7:04d}_c{i % 5:03d}_{i * 100:08d}_0.jpg" for i in range(n)]


def write(folder, feats, paths, sha=SHA_A, metric="cosine", shard=None):
    shard = shard or len(feats)
    parts = [(feats[s:s + shard], paths[s:s + shard]) for s in range(0, len(feats), shard)]
    save_feature_shards(str(folder), parts, metric=metric, weights_sha256=sha)
    return str(folder)


def cli(*argv, check=True, timeout=120):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "fastreid_plugins.tools.gallery", *argv],
                         capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
    if check:
        assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_veri_names_and_metadata_csv(tmp_path):
    assert parse_veri_name("/x/0002_c002_00030600_0.jpg") == {"pid": 2, "camera": "c002",
                                                               "time": 30600}
    assert parse_veri_name("crop.jpg") == {}
    csv = tmp_path / "m.csv"
    csv.write_text("path,camera,time,color\n/a/crop.jpg,gate1,12.5,red\n"
                   "0002_c002_00030600_0.jpg,c009,,blue\n")
    rows = read_metadata_csv(str(csv))
    assert image_payload("/a/crop.jpg", rows) == {"path": "/a/crop.jpg", "name": "crop.jpg",
                                                  "camera": "gate1", "time": 12.5,
                                                  "color": "red"}
    # matched by file name; the CSV wins over the parsed name, an empty cell does not
    assert image_payload("/d/0002_c002_00030600_0.jpg", rows) == {
        "path": "/d/0002_c002_00030600_0.jpg", "name": "0002_c002_00030600_0.jpg", "pid": 2,
        "camera": "c009", "time": 30600, "color": "blue"}
    bad = tmp_path / "bad.csv"
    bad.write_text("file,camera\nx.jpg,c1\n")
    with pytest.raises(DatasetError, match="no 'path' column"):
        read_metadata_csv(str(bad))
    bad.write_text("path,time\nx.jpg,noon\n")
    with pytest.raises(DatasetError, match="line 2: time 'noon'"):
        read_metadata_csv(str(bad))


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_gallery_equals_exact_search(metric, tmp_path):
    """Rankings and distances equal tools.search's exact shard-wise search (the evaluator's)."""
    rng = np.random.default_rng(1)
    g = rng.normal(size=(300, 32)).astype(np.float32)
    q = rng.normal(size=(12, 32)).astype(np.float32)
    paths = [f"/g/{i:05d}.jpg" for i in range(len(g))]
    store = FeatureStore(write(tmp_path / "g", g, paths, metric=metric, shard=70))
    ref_d, ref_i = exact_search(store, q, 20)
    with VectorGallery.from_manifest(str(tmp_path / "db"), store.manifest, create=True) as vg:
        vg.add(g, [{"path": p} for p in paths], batch=64)
        dist, hits = vg.search(q, 20)
    got_i = np.array([[paths.index(h["path"]) for h in row] for row in hits])
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-5, atol=1e-5)
    # and an independent numpy reference of the evaluator's distance
    if metric == "cosine":
        gn = g / np.linalg.norm(g, axis=1, keepdims=True)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        ref = 1 - qn @ gn.T
    else:
        ref = ((q[:, None, :] - g[None]) ** 2).sum(-1)
    np.testing.assert_allclose(dist, np.take_along_axis(ref, got_i, 1), rtol=1e-4, atol=1e-4)


def test_filters_return_k_matching_items(tmp_path):
    """Filters run inside Qdrant's query: the top-K are K matching items even when every
    matching item is far from the query (a post-filter of the global top-K would find none)."""
    rng = np.random.default_rng(2)
    q = rng.normal(size=(1, 16)).astype(np.float32)
    near = q + 0.01 * rng.normal(size=(200, 16)).astype(np.float32)
    far = -q + 0.5 * rng.normal(size=(40, 16)).astype(np.float32)
    g = np.concatenate([near, far])
    paths = [f"/g/{i:04d}.jpg" for i in range(len(g))]
    cams = ["c001"] * 200 + ["c005", "c007"] * 20
    times = list(range(len(g)))
    payloads = [{"path": p, "camera": c, "time": t} for p, c, t in zip(paths, cams, times)]
    with VectorGallery(str(tmp_path / "db"), 16, "cosine", SHA_A, create=True) as vg:
        vg.add(g, payloads)
        gn = g / np.linalg.norm(g, axis=1, keepdims=True)
        d_all = 1 - (q / np.linalg.norm(q)) @ gn.T

        def ref(mask, k):
            idx = np.flatnonzero(mask)
            return idx[np.argsort(d_all[0, idx], kind="stable")][:k]

        dist, hits = vg.search(q, 10, cameras=["c005", "c007"])
        assert [paths.index(h["path"]) for h in hits[0]] == list(ref(np.arange(240) >= 200, 10))
        assert all(h["camera"] in ("c005", "c007") for h in hits[0])
        dist, hits = vg.search(q, 10, cameras=["c005"], time_from=210, time_to=230)
        mask = (np.array(cams) == "c005") & (np.arange(240) >= 210) & (np.arange(240) <= 230)
        assert mask.sum() == 11
        assert [paths.index(h["path"]) for h in hits[0]] == list(ref(mask, 10))
        # fewer matches than K: the rest is inf
        dist, hits = vg.search(q, 10, time_from=235)
        assert len(hits[0]) == 5 and np.isinf(dist[0, 5:]).all() and np.isfinite(dist[0, :5]).all()
        # threshold: only distance <= VALUE
        dist, hits = vg.search(q, 50, threshold=float(np.sort(d_all[0])[7]))
        assert len(hits[0]) == 8
        with pytest.raises(ConfigError, match="field 'color'.*fields: \\['camera', 'path', "
                                              "'time'\\]"):
            vg.search(q, 5, where={"color": "red"})


def test_cli_add_search_delete_stats_and_readd(tmp_path):
    rng = np.random.default_rng(3)
    g = rng.normal(size=(60, 8)).astype(np.float32)
    paths = [f"/g/{n}" for n in names(60)]
    gdir = write(tmp_path / "g", g, paths, shard=25)
    qdir = write(tmp_path / "q", g[:2] + 1e-3, ["q0.jpg", "q1.jpg"])
    db = str(tmp_path / "db")
    assert tool.main(["add", "--gallery", db, "--features", gdir, "--batch-size", "7"])[
        "count"] == 60
    assert tool.main(["add", "--gallery", db, "--features", gdir])["count"] == 60  # idempotent
    out = tool.main(["search", "--gallery", db, "--query", qdir, "--topk", "3",
                     "--cameras", "c001,c002", "--output", str(tmp_path / "r.json")])
    res = json.load(open(tmp_path / "r.json"))
    assert [r["query"] for r in res] == ["q0.jpg", "q1.jpg"]
    assert res[1]["results"][0]["path"] == paths[1]  # image 1 is on c001, its own near copy
    assert all(h["camera"] in ("c001", "c002") for r in res for h in r["results"])
    assert out["dist"].shape == (2, 3)
    # --threshold: a value, or a calibrate file of the same metric and model
    d0 = out["dist"]
    cut = float(d0[0, 1] + d0[0, 2]) / 2  # between the 2nd and 3rd result of query 0
    thr = tool.main(["search", "--gallery", db, "--query", qdir, "--topk", "3", "--cameras",
                     "c001,c002", "--threshold", str(cut)])["dist"]
    np.testing.assert_array_equal(np.isfinite(thr), d0 <= cut)
    rec = tmp_path / "t.json"
    rec.write_text(json.dumps({"threshold": cut, "metric": "cosine", "model_sha256": SHA_A}))
    thr = tool.main(["search", "--gallery", db, "--query", qdir, "--topk", "3", "--cameras",
                     "c001,c002", "--threshold", str(rec)])["dist"]
    np.testing.assert_array_equal(np.isfinite(thr), d0 <= cut)
    rec.write_text(json.dumps({"threshold": cut, "metric": "cosine", "model_sha256": SHA_B}))
    with pytest.raises(ConfigError, match="calibrated for the model"):
        tool.main(["search", "--gallery", db, "--query", qdir, "--threshold", str(rec)])
    # delete by path, by camera, by time range (cameras i % 5, times 100 i)
    base = ["delete", "--gallery", db, "--model", gdir]
    assert tool.main(base + ["--paths", paths[0]])["removed"] == 1
    assert res[1]["results"][0]["id"] == point_id(paths[1])
    assert tool.main(base + ["--ids", res[1]["results"][0]["id"]])["removed"] == 1
    with pytest.raises(ConfigError, match="'12' is not a UUID"):
        tool.main(base + ["--ids", "12"])
    assert tool.main(base + ["--cameras", "c004"])["removed"] == 12
    left = [i for i in range(2, 60) if i % 5 != 4]
    assert tool.main(base + ["--time-from", "1000", "--time-to", "2000"])["removed"] == len(
        [i for i in left if 1000 <= 100 * i <= 2000])
    stats = tool.main(["stats", "--gallery", db])["collections"]["reid_" + SHA_A[:16]]
    assert stats["count"] == len([i for i in left if not 1000 <= 100 * i <= 2000])
    assert stats["dim"] == 8 and stats["metric"] == "cosine" and stats["weights_sha256"] == SHA_A
    with pytest.raises(ConfigError, match="Nothing selected"):
        tool.main(base)
    named = ["--gallery", db, "--collection", "reid_" + SHA_A[:16]]
    assert tool.main(["stats"] + named)["count"] == stats["count"]
    assert tool.main(["delete"] + named + ["--paths", "/not/added.jpg"])["removed"] == 0
    with pytest.raises(ConfigError, match="No collection 'x'.*reid_"):
        tool.main(["stats", "--gallery", db, "--collection", "x"])


@pytest.mark.skipif(not os.path.isdir(VERI_TEST), reason="VeRi sample not found")
def test_veri_sample_names_filter(tmp_path):
    """The real VeRi sample's file names give camera / time / pid filters."""
    files = sorted(os.path.join(VERI_TEST, f) for f in os.listdir(VERI_TEST))
    g = np.random.default_rng(4).normal(size=(len(files), 8)).astype(np.float32)
    gdir = write(tmp_path / "g", g, files)
    db = str(tmp_path / "db")
    tool.main(["add", "--gallery", db, "--features", gdir])
    cam = parse_veri_name(files[0])["camera"]
    expected = [f for f in files if os.path.basename(f).split("_")[1] == cam]
    qdir = write(tmp_path / "q", g[:1], ["q.jpg"])
    out = tool.main(["search", "--gallery", db, "--query", qdir, "--topk", str(len(files)),
                     "--cameras", cam])
    assert sorted(h["path"] for h in out["results"][0]["results"]) == expected


def test_killed_ingest_resumes_without_loss_or_duplicates(tmp_path):
    """SIGKILL an ingest mid-way, run it again: count == unique images, every vector right."""
    rng = np.random.default_rng(5)
    n = 6000
    g = rng.normal(size=(n, 32)).astype(np.float32)
    paths = [f"/g/{i:06d}.jpg" for i in range(n)]
    paths[-1] = paths[0]  # a duplicated path: one point
    gdir = write(tmp_path / "g", g, paths, shard=500)
    db = str(tmp_path / "db")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "fastreid_plugins.tools.gallery", "add",
                             "--gallery", db, "--features", gdir, "--batch-size", "100"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                            env=env)
    line = proc.stdout.readline()
    assert line.startswith("added 500/"), line
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    with VectorGallery(db, 32, "cosine", SHA_A) as vg:
        partial = len(vg)
    assert 500 <= partial < n - 1
    cli("add", "--gallery", db, "--features", gdir)
    with VectorGallery(db, 32, "cosine", SHA_A) as vg:
        assert len(vg) == n - 1
        pts = vg.client.retrieve(vg.name, [point_id(paths[1]), point_id(paths[0])],
                                 with_vectors=True)
        got = {p.payload["path"]: np.array(p.vector) for p in pts}
    unit = g / np.linalg.norm(g, axis=1, keepdims=True)
    # (a server stores cosine vectors normalised, the embedded mode as given: compare directions)
    for path, row in ((paths[1], 1), (paths[0], n - 1)):  # a repeated path: the last write wins
        np.testing.assert_allclose(got[path] / np.linalg.norm(got[path]), unit[row], atol=1e-6)


def test_other_model_or_dimension_is_refused(tmp_path):
    rng = np.random.default_rng(6)
    db = str(tmp_path / "db")
    with VectorGallery(db, 8, "cosine", SHA_A, create=True) as vg:
        vg.add(rng.normal(size=(5, 8)), [{"path": f"{i}.jpg"} for i in range(5)])
        with pytest.raises(DatasetError, match=r"shape \(3, 4\).*dimension 8"):
            vg.search(rng.normal(size=(3, 4)), 2)
        with pytest.raises(DatasetError, match=r"shape \(2, 9\).*dimension 8"):
            vg.add(rng.normal(size=(2, 9)), [{"path": "x"}, {"path": "y"}])
    # the same collection with another dimension / metric: both named
    with pytest.raises(DatasetError, match=r"dim 8, cosine.*dim 16, cosine"):
        VectorGallery(db, 16, "cosine", SHA_A, create=True)
    with pytest.raises(DatasetError, match=r"metric 'cosine'.*metric 'euclidean'"):
        VectorGallery(db, 8, "euclidean", SHA_A)
    # another model's queries: no such collection, the ones there are listed
    qdir = write(tmp_path / "q", rng.normal(size=(2, 8)).astype(np.float32), ["a", "b"],
                 sha=SHA_B)
    res = cli("search", "--gallery", db, "--query", qdir, check=False)
    assert res.returncode == 2
    assert f"reid_{SHA_B[:16]}" in res.stderr and f"reid_{SHA_A[:16]}" in res.stderr


def test_bad_locations(tmp_path):
    t0 = time.time()
    res = cli("stats", "--gallery", "http://127.0.0.1:9", "--timeout", "2", check=False)
    assert res.returncode == 2 and "http://127.0.0.1:9" in res.stderr
    assert "unreachable" in res.stderr and time.time() - t0 < 60
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(DatasetError, match="is a file"):
        VectorGallery(str(f), 8, "cosine", SHA_A, create=True)
    # a corrupt database: the collection's storage overwritten with garbage
    db = tmp_path / "db"
    with VectorGallery(str(db), 8, "cosine", SHA_A, create=True) as vg:
        vg.add(np.ones((2, 8)), [{"path": "a"}, {"path": "b"}])
    (db / "meta.json").write_text("{not json")
    res = cli("stats", "--gallery", str(db), check=False)
    assert res.returncode == 2 and str(db) in res.stderr and "not a readable Qdrant" in \
        res.stderr, res.stderr
    sqlite = [os.path.join(d, n) for d, _, ns in os.walk(db) for n in ns if n.endswith(".sqlite")]
    assert sqlite
    db2 = tmp_path / "db2"
    with VectorGallery(str(db2), 8, "cosine", SHA_A, create=True) as vg:
        vg.add(np.ones((2, 8)), [{"path": "a"}, {"path": "b"}])
    for d, _, ns in os.walk(db2):
        for n in ns:
            if n.endswith(".sqlite"):
                open(os.path.join(d, n), "wb").write(b"garbage" * 100)
    with pytest.raises(DatasetError, match="not a readable Qdrant"):
        VectorGallery(str(db2), 8, "cosine", SHA_A)


def test_missing_extra_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "qdrant_client", None)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[gallery\]"'):
        VectorGallery(str(tmp_path / "db"), 8, "cosine", SHA_A, create=True)


def test_speed_bench_runs_and_agrees_with_faiss():
    """bench/gallery_speed.py at a tiny size: both searches exact, so the top-K agree."""
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gallery_speed.py"),
                          "--n", "300", "--dim", "16", "--queries", "5"], capture_output=True,
                         text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout[res.stdout.index("{"):])
    assert out["recall_at_k_vs_faiss"] == 1.0 and out["qdrant_insert_per_s"] > 0
