"""The vector gallery (issue 29): Milvus collections of extracted features, searched with the
evaluator's distances and filters executed by the database; idempotent, crash-safe ingest;
approximate indexes with measured recall; clear bad-input errors.

Every backend test runs twice: on Milvus Lite (a local ``.db`` file) and on a real Milvus 2.3.5
standalone server (the ``milvus`` package's embedded server, started once per session in a
temporary folder on free ports, stopped at the end). The server tests skip only where ``milvus``
is not installed and ``REQUIRE_SHARED_DATA`` is unset (CI sets it: there a missing server
package fails).
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

pytest.importorskip("pymilvus")

from fastreid_plugins.errors import ConfigError, DatasetError  # noqa: E402
from fastreid_plugins.gallery import (  # noqa: E402
    VectorGallery,
    image_payload,
    parse_veri_name,
    point_id,
    read_metadata_csv,
)
from fastreid_plugins.gallery.store import connect, disconnect, list_galleries  # noqa: E402
from fastreid_plugins.tools import gallery as tool  # noqa: E402
from fastreid_plugins.tools import search as search_tool  # noqa: E402
from fastreid_plugins.tools.extract import save_feature_shards  # noqa: E402
from fastreid_plugins.tools.search import FeatureStore, exact_search  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHA_A, SHA_B = "a" * 64, "b" * 64
VERI_TEST = os.path.join(os.environ.get("FASTREID_DATASETS", "/nonexistent"), "veri", "image_test")
#: seconds the session's Milvus server may take to start
SERVER_START_S = 120


@pytest.fixture(scope="session")
def milvus_server(tmp_path_factory):
    """URI of a real Milvus standalone server (``milvus.MilvusServer``: the Milvus 2.3.5 binary,
    embedded etcd and local storage) in a temporary folder, on free ports."""
    try:
        from milvus import MilvusServer
    except ImportError as e:
        msg = f"the Milvus server package is not installed ({e}): pip install --no-deps " \
              "milvus==2.3.5"
        if os.environ.get("REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg + " (REQUIRE_SHARED_DATA=1)")
        pytest.skip(msg)
    import urllib.request

    base = str(tmp_path_factory.mktemp("milvus_server"))
    server = MilvusServer(wait_for_started=False)
    server.set_base_dir(base)
    server.start()
    health = f"http://127.0.0.1:{server.webservice_port}/healthz"
    t0 = time.time()
    try:  # its own wait_started would wait the whole timeout for a server that died
        while True:
            if server.server_proc.poll() is not None:
                raise RuntimeError(f"the Milvus server exited at start (another one running on "
                                   f"this machine?): {base}/logs/milvus-stderr.log")
            try:
                with urllib.request.urlopen(health, timeout=2) as resp:
                    if b"OK" in resp.read():
                        break
            except OSError:
                pass
            if time.time() - t0 > SERVER_START_S:
                raise TimeoutError(f"the Milvus server did not start in {SERVER_START_S} s: "
                                   f"{base}/logs")
            time.sleep(0.2)
    except BaseException:
        server.stop()
        raise
    yield f"http://127.0.0.1:{server.listen_port}"
    server.stop()


@pytest.fixture(params=["lite", pytest.param("server", marks=pytest.mark.slow)])
def location(request, tmp_path):
    """A gallery location: a fresh Milvus Lite file, or the session's server emptied (5-20 s a
    test on the 2-core machine: marked slow, run by `make test`, skipped by `make test-fast`)."""
    if request.param == "lite":
        return str(tmp_path / "gallery.db")
    uri = request.getfixturevalue("milvus_server")
    client = connect(uri)
    for name in client.list_collections():
        client.drop_collection(name)
    disconnect(client, uri)
    return uri


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
def test_gallery_equals_exact_search(metric, location, tmp_path):
    """Rankings and distances equal tools.search's exact shard-wise search (the evaluator's),
    and a numpy reference of the evaluator's distance (cosine: 1 - cos; euclidean: squared L2,
    which is what Milvus's L2 returns)."""
    rng = np.random.default_rng(1)
    g = rng.normal(size=(300, 32)).astype(np.float32)
    q = rng.normal(size=(12, 32)).astype(np.float32)
    paths = [f"/g/{i:05d}.jpg" for i in range(len(g))]
    store = FeatureStore(write(tmp_path / "g", g, paths, metric=metric, shard=70))
    ref_d, ref_i = exact_search(store, q, 20)
    with VectorGallery.from_manifest(location, store.manifest, create=True) as vg:
        vg.add(g, [{"path": p} for p in paths], batch=64)
        dist, hits = vg.search(q, 20)
        scan_d, scan_ids = vg.exact_scan(q, 20)
    got_i = np.array([[paths.index(h["path"]) for h in row] for row in hits])
    np.testing.assert_array_equal(got_i, ref_i)
    np.testing.assert_allclose(dist, ref_d, rtol=1e-5, atol=1e-5)
    if metric == "cosine":
        gn = g / np.linalg.norm(g, axis=1, keepdims=True)
        qn = q / np.linalg.norm(q, axis=1, keepdims=True)
        ref = 1 - qn @ gn.T
    else:
        ref = ((q[:, None, :] - g[None]) ** 2).sum(-1)
    np.testing.assert_allclose(dist, np.take_along_axis(ref, got_i, 1), rtol=1e-4, atol=1e-4)
    # the exact scan (recall reference of approximate indexes) agrees too
    assert scan_ids == [[point_id(paths[i]) for i in row] for row in ref_i]
    np.testing.assert_allclose(scan_d, ref_d, rtol=1e-4, atol=1e-4)


def test_filters_return_k_matching_items(location):
    """Filters run inside Milvus's search: the top-K are K matching items even when every
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
    with VectorGallery(location, 16, "cosine", SHA_A, create=True) as vg:
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
        srt = np.sort(d_all[0])
        i = 5 + int(np.argmax(np.diff(srt[5:30])))  # a clear gap: float rounding cannot cross it
        dist, hits = vg.search(q, 50, threshold=float(srt[i] + srt[i + 1]) / 2)
        assert len(hits[0]) == i + 1
        with pytest.raises(ConfigError, match="field 'color'.*fields: \\['camera', 'path', "
                                              "'time'\\]"):
            vg.search(q, 5, where={"color": "red"})
        # a path repeated within one batch: one row, the last one's metadata
        vg.add(g[:2], [{"path": "/g/0000.jpg", "camera": "c009", "time": -1},
                       {"path": "/g/0000.jpg", "camera": "c008", "time": -2}])
        assert len(vg) == 240
        _, hits = vg.search(q, 5, cameras=["c008", "c009"])
        assert [(h["path"], h["camera"], h["time"]) for h in hits[0]] == [("/g/0000.jpg",
                                                                         "c008", -2)]
        # a free field added later is filterable, with a number or a string
        vg.add(g[:3], [{"path": "/x/a.jpg", "color": "red"}, {"path": "/x/b.jpg", "color": "blue"},
                       {"path": "/x/c.jpg", "color": "red", "lane": 2}])
        _, hits = vg.search(q, 10, where={"color": "red"})
        assert sorted(h["path"] for h in hits[0]) == ["/x/a.jpg", "/x/c.jpg"]
        _, hits = vg.search(q, 10, where={"lane": 2})
        assert [h["path"] for h in hits[0]] == ["/x/c.jpg"]


def _csv_rows(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow  # ~15 s on Milvus Lite: each command restarts its engine (0.5 s wait each)
def test_cli_add_search_delete_stats_and_readd(location, tmp_path):
    rng = np.random.default_rng(3)
    g = rng.normal(size=(60, 8)).astype(np.float32)
    paths = [f"/g/{n}" for n in names(60)]
    gdir = write(tmp_path / "g", g, paths, shard=25)
    qdir = write(tmp_path / "q", g[:2] + 1e-3, ["q0.jpg", "q1.jpg"])
    db = location
    assert tool.main(["add", "--gallery", db, "--features", gdir, "--batch-size", "7"])[
        "count"] == 60
    assert tool.main(["add", "--gallery", db, "--features", gdir])["count"] == 60  # idempotent
    out = tool.main(["search", "--gallery", db, "--query", qdir, "--topk", "3",
                     "--cameras", "c001,c002", "--output", str(tmp_path / "r.json")])
    res = json.load(open(tmp_path / "r.json"))["results"]
    assert [r["query"] for r in res] == ["q0.jpg", "q1.jpg"]
    assert res[1]["ranking"][0]["gallery"] == paths[1]  # image 1 is on c001, its own near copy
    hits = out["results"]
    assert all(h["camera"] in ("c001", "c002") for r in hits for h in r["results"])
    assert out["dist"].shape == (2, 3)
    # --threshold: a value, or a calibrate file of the same metric and model; CSV with decisions
    d0 = out["dist"]
    cut = float(d0[0, 1] + d0[0, 2]) / 2  # between the 2nd and 3rd result of query 0
    thr = tool.main(["search", "--gallery", db, "--query", qdir, "--topk", "3", "--cameras",
                     "c001,c002", "--threshold", str(cut), "--output", str(tmp_path / "r.csv")])
    rows = _csv_rows(tmp_path / "r.csv")
    want = [(q, r + 1) for q in range(2) for r in range(3) if d0[q, r] <= cut]
    assert [(["q0.jpg", "q1.jpg"].index(x["query"]), int(x["rank"])) for x in rows
            if x["decision"] == "match"] == want
    assert all(float(x["distance"]) <= cut for x in rows if x["decision"] == "match")
    assert thr["info"]["no_match"] == sum(1 for q in range(2) if not (d0[q] <= cut).any())
    far = tool.main(["search", "--gallery", db, "--query", qdir, "--topk", "3", "--threshold",
                     "-1", "--output", str(tmp_path / "none.csv")])
    assert far["info"]["no_match"] == 2
    assert [(x["query"], x["rank"], x["decision"]) for x in _csv_rows(tmp_path / "none.csv")] \
        == [("q0.jpg", "0", "no match"), ("q1.jpg", "0", "no match")]
    rec = tmp_path / "t.json"
    rec.write_text(json.dumps({"threshold": cut, "metric": "cosine", "model_sha256": SHA_A}))
    thr = tool.main(["search", "--gallery", db, "--query", qdir, "--topk", "3", "--cameras",
                     "c001,c002", "--threshold", str(rec)])["dist"]
    np.testing.assert_array_equal(thr, d0)
    rec.write_text(json.dumps({"threshold": cut, "metric": "cosine", "model_sha256": SHA_B}))
    with pytest.raises(ConfigError, match="calibrated for the model"):
        tool.main(["search", "--gallery", db, "--query", qdir, "--threshold", str(rec)])
    # delete by path, by camera, by time range (cameras i % 5, times 100 i)
    base = ["delete", "--gallery", db, "--model", gdir]
    assert tool.main(base + ["--paths", paths[0]])["removed"] == 1
    assert hits[1]["results"][0]["id"] == point_id(paths[1])
    assert tool.main(base + ["--ids", hits[1]["results"][0]["id"]])["removed"] == 1
    with pytest.raises(ConfigError, match="'12' is not a UUID"):
        tool.main(base + ["--ids", "12"])
    assert tool.main(base + ["--cameras", "c004"])["removed"] == 12
    left = [i for i in range(2, 60) if i % 5 != 4]
    assert tool.main(base + ["--time-from", "1000", "--time-to", "2000"])["removed"] == len(
        [i for i in left if 1000 <= 100 * i <= 2000])
    stats = tool.main(["stats", "--gallery", db])["collections"]["reid_" + SHA_A[:16]]
    assert stats["count"] == len([i for i in left if not 1000 <= 100 * i <= 2000])
    assert stats["dim"] == 8 and stats["metric"] == "cosine" and stats["weights_sha256"] == SHA_A
    assert stats["index"] == "flat"
    with pytest.raises(ConfigError, match="Nothing selected"):
        tool.main(base)
    named = ["--gallery", db, "--collection", "reid_" + SHA_A[:16]]
    assert tool.main(["stats"] + named)["count"] == stats["count"]
    assert tool.main(["delete"] + named + ["--paths", "/not/added.jpg"])["removed"] == 0
    with pytest.raises(ConfigError, match="No collection 'x'.*reid_"):
        tool.main(["stats", "--gallery", db, "--collection", "x"])


def test_per_camera_pair_thresholds_in_gallery_and_search(tmp_path):
    """A calibrate file's per-camera-pair thresholds decide each result by its (query camera,
    gallery camera) pair, the global one elsewhere, in both tools.gallery and tools.search."""
    rng = np.random.default_rng(8)
    g = rng.normal(size=(40, 8)).astype(np.float32)
    gpaths = [f"/g/{n}" for n in names(40)]  # cameras 0..4
    qpaths = ["0001_c001_00000100_0.jpg", "query_without_camera.jpg"]
    gdir = write(tmp_path / "g", g, gpaths)
    qdir = write(tmp_path / "q", g[[1, 2]] + 0.3 * rng.normal(size=(2, 8)).astype(np.float32),
                 qpaths)
    db = str(tmp_path / "g.db")
    tool.main(["add", "--gallery", db, "--features", gdir])
    rec = {"threshold": 0.5, "metric": "cosine", "model_sha256": SHA_A, "per_camera_pair": {
        "1-1": {"threshold": 2.0, "fallback": False}, "0-1": {"threshold": 0.0,
                                                              "fallback": False},
        "1-3": {"threshold": 0.5, "fallback": True}}}
    (tmp_path / "t.json").write_text(json.dumps(rec))
    k = 40
    gal = tool.main(["search", "--gallery", db, "--query", qdir, "--topk", str(k), "--threshold",
                     str(tmp_path / "t.json"), "--output", str(tmp_path / "g.json")])
    srch = search_tool.main(["--gallery", gdir, "--query", qdir, "--topk", str(k), "--threshold",
                             str(tmp_path / "t.json"), "--output", str(tmp_path / "s.json"),
                             "--no-progress"])
    # independent reference: the pair of each (query, gallery image) from the names
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    qf = FeatureStore(qdir).features()
    d = 1 - (qf / np.linalg.norm(qf, axis=1, keepdims=True)) @ gn.T
    want = []
    for qi in range(2):
        acc = []
        for j in np.argsort(d[qi], kind="stable"):
            gc = j % 5
            t = 0.5
            if qi == 0 and gc == 1:
                t = 2.0
            elif qi == 0 and gc == 0:
                t = 0.0
            if d[qi, j] <= t:
                acc.append(gpaths[j])
        want.append(acc)
    for f in ("g.json", "s.json"):
        got = json.load(open(tmp_path / f))["results"]
        assert [[r["gallery"] for r in q["ranking"]] for q in got] == want, f
        assert all(r["decision"] == "match" for q in got for r in q["ranking"])
    assert any(gpaths.index(p) % 5 == 1 and d[0, gpaths.index(p)] > 0.5 for p in want[0])
    assert gal["info"]["no_match"] == srch["info"]["no_match"] == sum(1 for w in want if not w)


@pytest.mark.parametrize("index", ["hnsw", "ivf_flat"])
def test_approximate_index_recall_printed(index, location, tmp_path):
    """An approximate collection: its recall@K against an exact scan is measured and printed;
    with a generous beam / all lists probed it finds the exact top-K (checked with numpy)."""
    rng = np.random.default_rng(9)
    g = rng.normal(size=(2000, 16)).astype(np.float32)
    paths = [f"/g/{i:05d}.jpg" for i in range(len(g))]
    gdir = write(tmp_path / "g", g, paths)
    qdir = write(tmp_path / "q", g[:30] + 0.1, [f"q{i}.jpg" for i in range(30)])
    add = ["add", "--gallery", location, "--features", gdir, "--index", index, "--nlist", "16"]
    if index == "hnsw" and location.endswith(".db"):  # Milvus Lite builds flat / ivf_flat only
        with pytest.raises(ConfigError, match="--index hnsw needs a Milvus server"):
            tool.main(add)
        client = connect(location)
        assert list_galleries(client) == []
        disconnect(client, location)
        return
    assert tool.main(add)["index"] == index
    res = cli("search", "--gallery", location, "--query", qdir, "--topk", "5",
              "--recall-sample", "20", "--nprobe", "16", "--ef-search", "400")
    assert "recall@5 of " + index in res.stderr and "vs exact scan on 20 queries" in res.stderr
    out = tool.main(["search", "--gallery", location, "--query", qdir, "--topk", "5",
                     "--nprobe", "16", "--ef-search", "400", "--recall-sample", "30"])
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    qf = FeatureStore(qdir).features()
    ref = np.argsort(1 - (qf / np.linalg.norm(qf, axis=1, keepdims=True)) @ gn.T, 1)[:, :5]
    got = np.array([[paths.index(h["path"]) for h in r["results"]] for r in out["results"]])
    exact_recall = np.mean([len(set(a) & set(b)) / 5 for a, b in zip(got, ref)])
    assert out["info"]["recall_at_k"] == pytest.approx(exact_recall)
    assert exact_recall >= 0.95
    with pytest.raises(ConfigError, match="--index must be one of"):
        VectorGallery(location, 16, "cosine", SHA_B, create=True, index="pq")


@pytest.mark.skipif(not os.path.isdir(VERI_TEST), reason="VeRi sample not found")
def test_veri_sample_names_filter(tmp_path):
    """The real VeRi sample's file names give camera / time / pid filters."""
    files = sorted(os.path.join(VERI_TEST, f) for f in os.listdir(VERI_TEST))
    g = np.random.default_rng(4).normal(size=(len(files), 8)).astype(np.float32)
    gdir = write(tmp_path / "g", g, files)
    db = str(tmp_path / "g.db")
    tool.main(["add", "--gallery", db, "--features", gdir])
    cam = parse_veri_name(files[0])["camera"]
    expected = [f for f in files if os.path.basename(f).split("_")[1] == cam]
    qdir = write(tmp_path / "q", g[:1], ["q.jpg"])
    out = tool.main(["search", "--gallery", db, "--query", qdir, "--topk", str(len(files)),
                     "--cameras", cam])
    assert sorted(h["path"] for h in out["results"][0]["results"]) == expected
    # tools.search's rank-list pictures, the threshold marked (query: a real image)
    qimg = write(tmp_path / "qi", g[:1], files[:1])
    out = tool.main(["search", "--gallery", db, "--query", qimg, "--topk", "5", "--threshold",
                     "0.5", "--vis", "1", "--vis-dir", str(tmp_path / "vis")])
    assert len(out["vis"]) == 1 and os.path.getsize(out["vis"][0]) > 1000


@pytest.mark.slow
def test_killed_ingest_resumes_without_loss_or_duplicates(location, tmp_path):
    """SIGKILL an ingest mid-way, run it again: count == unique images, every vector right."""
    rng = np.random.default_rng(5)
    n = 6000
    g = rng.normal(size=(n, 32)).astype(np.float32)
    paths = [f"/g/{i:06d}.jpg" for i in range(n)]
    paths[-1] = paths[0]  # a duplicated path: one row
    gdir = write(tmp_path / "g", g, paths, shard=500)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.Popen([sys.executable, "-m", "fastreid_plugins.tools.gallery", "add",
                             "--gallery", location, "--features", gdir, "--batch-size", "100"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, cwd=ROOT,
                            env=env)
    try:
        line = proc.stdout.readline()
        assert line.startswith("added 500/"), line
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    time.sleep(1)  # Milvus Lite's engine process follows its killed parent
    with VectorGallery(location, 32, "cosine", SHA_A) as vg:
        partial = len(vg)
    assert 500 <= partial < n - 1
    cli("add", "--gallery", location, "--features", gdir)
    with VectorGallery(location, 32, "cosine", SHA_A) as vg:
        assert len(vg) == n - 1
        got = {r["path"]: np.array(r["vector"]) for r in vg.client.get(
            vg.name, ids=[point_id(paths[1]), point_id(paths[0])], output_fields=["vector",
                                                                                   "path"])}
    for path, row in ((paths[1], 1), (paths[0], n - 1)):  # a repeated path: the last write wins
        np.testing.assert_allclose(got[path], g[row], atol=1e-6)


def test_other_model_or_dimension_is_refused(location, tmp_path):
    rng = np.random.default_rng(6)
    with VectorGallery(location, 8, "cosine", SHA_A, create=True) as vg:
        vg.add(rng.normal(size=(5, 8)), [{"path": f"{i}.jpg"} for i in range(5)])
        with pytest.raises(DatasetError, match=r"shape \(3, 4\).*dimension 8"):
            vg.search(rng.normal(size=(3, 4)), 2)
        with pytest.raises(DatasetError, match=r"shape \(2, 9\).*dimension 8"):
            vg.add(rng.normal(size=(2, 9)), [{"path": "x"}, {"path": "y"}])
        assert len(vg) == 5  # nothing half-written
    # the same collection with another dimension / metric: both named
    with pytest.raises(DatasetError, match=r"dim 8, cosine.*dim 16, cosine"):
        VectorGallery(location, 16, "cosine", SHA_A, create=True)
    with pytest.raises(DatasetError, match=r"metric 'cosine'.*metric 'euclidean'"):
        VectorGallery(location, 8, "euclidean", SHA_A)
    # another model's queries: no such collection, the ones there are listed
    qdir = write(tmp_path / "q", rng.normal(size=(2, 8)).astype(np.float32), ["a", "b"],
                 sha=SHA_B)
    res = cli("search", "--gallery", location, "--query", qdir, check=False)
    assert res.returncode == 2, res.stderr
    assert f"reid_{SHA_B[:16]}" in res.stderr and f"reid_{SHA_A[:16]}" in res.stderr
    client = connect(location)
    assert list_galleries(client) == [f"reid_{SHA_A[:16]}"]  # nothing created by the refusals
    disconnect(client, location)


def test_bad_locations(tmp_path):
    t0 = time.time()
    res = cli("stats", "--gallery", "http://127.0.0.1:9", "--timeout", "2", check=False)
    assert res.returncode == 2 and "http://127.0.0.1:9" in res.stderr
    assert "unreachable" in res.stderr and time.time() - t0 < 60
    assert "Traceback" not in res.stderr and len(res.stderr.splitlines()) < 8, res.stderr
    with pytest.raises(ConfigError, match="ending in .db"):
        VectorGallery(str(tmp_path / "folder"), 8, "cosine", SHA_A, create=True)
    (tmp_path / "dir.db").mkdir()
    with pytest.raises(DatasetError, match="is a folder"):
        VectorGallery(str(tmp_path / "dir.db"), 8, "cosine", SHA_A, create=True)
    # a corrupt database file
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"garbage" * 500)
    res = cli("stats", "--gallery", str(bad), check=False)
    assert res.returncode == 2 and str(bad) in res.stderr and "not a readable Milvus Lite" in \
        res.stderr, res.stderr
    assert bad.read_bytes() == b"garbage" * 500  # left as it was
    # a file open in another process
    db = str(tmp_path / "g.db")
    with VectorGallery(db, 8, "cosine", SHA_A, create=True) as vg:
        vg.add(np.ones((2, 8)), [{"path": "a"}, {"path": "b"}])
        res = cli("stats", "--gallery", db, check=False)
        assert res.returncode == 2 and "open in another process" in res.stderr, res.stderr


def test_missing_extra_names_the_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "pymilvus", None)
    with pytest.raises(ConfigError, match=r'pip install -e "\.\[gallery\]"'):
        VectorGallery(str(tmp_path / "g.db"), 8, "cosine", SHA_A, create=True)


@pytest.mark.slow
def test_speed_bench_runs_and_agrees_with_faiss(milvus_server):
    """bench/gallery_speed.py at a tiny size on both backends: flat searches are exact, so the
    top-K agree with faiss's."""
    res = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "gallery_speed.py"),
                          "--n", "300", "--dim", "16", "--queries", "5", "--server",
                          milvus_server], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    out = json.loads(res.stdout[res.stdout.index("{"):])
    for backend in ("lite", "server"):
        assert out[backend]["recall_at_k_vs_faiss"] == 1.0, backend
        assert out[backend]["insert_per_s"] > 0
