"""Threshold calibration (``tools.calibrate``) and open-set search (``tools.search --threshold``).

References: brute force over every pair written out here; hand-made pairs; on the real VeRi
sample, an open-set run with one identity held out of the gallery, checked against what the
calibration promises (illustrative on 57 images: sane bounds, not exact values).
"""

import csv
import json
import os

import numpy as np
import pytest

from fastreid_plugins.errors import ConfigError, DatasetError
from fastreid_plugins.tools import calibrate as cal
from fastreid_plugins.tools import extract, search
from tests.test_extract import models  # noqa: F401


def test_threshold_at_far_by_hand():
    d = np.array([0.1, 0.2, 0.3, 0.35, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9])
    pos = np.array([1, 0, 1, 1, 0, 1, 0, 0, 0, 0], bool)
    # 6 negatives: FAR <= 1/6 allows the negative at 0.2 only -> threshold 0.35 (largest pair
    # distance below the second negative 0.4), TAR 3/4 (0.1, 0.3, 0.35)
    t, tar, far = cal.threshold_at_far(d, pos, 0.2)
    assert (t, tar, far) == (0.35, 0.75, pytest.approx(1 / 6))
    # FAR 0.1 < 1/6: no negative may be accepted -> threshold 0.1, TAR 1/4
    assert cal.threshold_at_far(d, pos, 0.1)[:2] == (0.1, 0.25)
    # weights (bootstrap multiplicities): the negative at 0.2 counted 3 times -> FAR 3/8 there
    w = np.ones(10)
    w[1] = 3
    assert cal.threshold_at_far(d, pos, 0.2, w)[:2] == (0.1, 0.25)
    with pytest.raises(ValueError, match="positive and negative"):
        cal.threshold_at_far(d[pos], pos[pos], 0.1)


def _clusters(n_id=30, per=6, d=16, seed=0, noise=0.7):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(n_id, d))
    pids = np.repeat(np.arange(n_id), per)
    cams = rng.integers(0, 5, len(pids))
    return centers[pids] + noise * rng.normal(size=(len(pids), d)), pids, cams


def _brute_pairs(f, pids, cams, metric):
    x = f / np.linalg.norm(f, axis=1, keepdims=True) if metric == "cosine" else f
    d = 1 - x @ x.T if metric == "cosine" else ((x[:, None] - x[None]) ** 2).sum(-1)
    i, j = np.triu_indices(len(f), 1)
    keep = ~((pids[i] == pids[j]) & (cams[i] == cams[j]))
    return d[i, j][keep], (pids[i] == pids[j])[keep]


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_calibrate_equals_brute_force(metric):
    f, pids, cams = _clusters()
    far = 1e-2
    rec = cal.calibrate(f, pids, cams, metric, far, n_boot=50, seed=3)
    d, pos = _brute_pairs(f, pids, cams, metric)
    assert rec["num_pos"] == pos.sum() and rec["num_neg"] == (~pos).sum()
    # brute force: the largest threshold whose FAR <= far, from the sorted negatives
    neg = np.sort(d[~pos])
    k = int(np.floor(far * len(neg)))  # negatives that may be accepted
    cut = neg[k]  # the first negative that may not
    tol = 1e-5 * max(1.0, float(np.abs(d).max()))
    assert rec["threshold"] < cut + tol
    assert rec["tar"] == pytest.approx((d[pos] < cut - tol).mean(), abs=2 / pos.sum())
    assert rec["far"] <= far
    ci = rec["ci"]
    assert ci["resamples"] == 50 and ci["unit"] == "query"
    assert ci["tar"][0] <= rec["tar"] + 0.05 and rec["tar"] - 0.05 <= ci["tar"][1]
    assert ci["threshold"][0] <= ci["threshold"][1]
    again = cal.calibrate(f, pids, cams, metric, far, n_boot=50, seed=3)
    assert again["ci"] == ci  # seeded


def test_per_camera_pairs_and_fallback():
    f, pids, cams = _clusters(n_id=40, per=8)
    rec = cal.calibrate(f, pids, cams, "cosine", 0.05, n_boot=0, per_camera_pair=True,
                        min_pairs=2000)
    per = rec["per_camera_pair"]
    d, pos = _brute_pairs(f, pids, cams, "cosine")
    i, j = np.triu_indices(len(f), 1)
    keep = ~((pids[i] == pids[j]) & (cams[i] == cams[j]))
    a, b = np.minimum(cams[i], cams[j])[keep], np.maximum(cams[i], cams[j])[keep]
    assert sum(v["num_pos"] + v["num_neg"] for v in per.values()) == len(d)
    assert any(v["fallback"] for v in per.values())
    assert not all(v["fallback"] for v in per.values())
    for name, v in per.items():
        ca, cb = map(int, name.split("-"))
        m = (a == ca) & (b == cb)
        assert v["num_neg"] == (~pos[m]).sum()
        if v["fallback"]:
            assert (v["num_neg"] < 2000 or v["num_pos"] == 0) and v["threshold"] == rec["threshold"]
        else:
            assert v["num_neg"] >= 2000 and v["num_pos"] > 0
            assert (d[m][~pos[m]] <= v["threshold"] - 1e-6).mean() <= 0.05


def test_labels_from_names_and_csv(tmp_path):
    assert cal.labels_from_paths(["a/0002_c011_1.jpg", "0546_c008_x.jpg"]) == ([2, 546], [11, 8])
    with pytest.raises(DatasetError, match="--labels"):
        cal.labels_from_paths(["car.jpg"])
    lab = tmp_path / "l.csv"
    lab.write_text("path,pid,camid\nx/car.jpg,7,1\n")
    assert cal.labels_from_paths(["car.jpg"], str(lab)) == ([7], [1])
    with pytest.raises(DatasetError, match="no row"):
        cal.labels_from_paths(["bus.jpg"], str(lab))


def test_load_threshold_refuses_other_metric_or_model(tmp_path):
    from fastreid_plugins.evaluation.verification import load_threshold

    rec = {"threshold": 0.3, "metric": "cosine", "model_sha256": "a" * 64, "weights": "m.pth"}
    p = tmp_path / "t.json"
    p.write_text(json.dumps(rec))
    assert load_threshold("0.25", "euclidean")[0] == 0.25
    assert load_threshold(str(p), "cosine", "a" * 64)[0] == 0.3
    with pytest.raises(ConfigError, match=r"metric 'cosine'.*'euclidean'"):
        load_threshold(str(p), "euclidean", "a" * 64)
    with pytest.raises(ConfigError, match=r"aaaaaaaaaaaaaaaa.*m\.pth.*bbbbbbbbbbbbbbbb"):
        load_threshold(str(p), "cosine", "b" * 64)
    with pytest.raises(ConfigError, match="neither a number nor"):
        load_threshold(str(tmp_path / "missing.json"), "cosine")


# ----------------------------------------------------------------------------- the VeRi sample
def colour_features(paths, bins=6):
    """A model-free descriptor of each image (3-D RGB histogram of a 64x64 copy):
    enough to tell the sample's four vehicles apart roughly, so that the threshold matters."""
    from PIL import Image

    out = []
    for p in paths:
        im = np.asarray(Image.open(p).convert("RGB").resize((64, 64))).reshape(-1, 3)
        im = im.astype(np.int64) * bins // 256
        h = np.bincount(im[:, 0] * bins * bins + im[:, 1] * bins + im[:, 2],
                        minlength=bins ** 3).astype(np.float32)
        out.append(np.sqrt(h / h.sum()))
    return np.stack(out)


def _images(root, split):
    d = os.path.join(root, "veri", split)
    return sorted(os.path.join(d, f) for f in os.listdir(d) if f.endswith(".jpg"))


def test_open_set_search_on_the_sample(veri_root, tmp_path):
    sha = "c" * 64
    train, query, test = (_images(veri_root, s) for s in ("image_train", "image_query",
                                                          "image_test"))
    held_out = 546  # this identity's images are taken out of the gallery
    gallery = [p for p in test if cal.labels_from_paths([p])[0][0] != held_out]
    dirs = {}
    for name, paths in (("train", train), ("query", query), ("gallery", gallery)):
        dirs[name] = str(tmp_path / name)
        extract.save_feature_shards(dirs[name], [(colour_features(paths), paths)],
                                    metric="cosine", weights_sha256=sha, weights="colour")
    far = 0.01
    thr = str(tmp_path / "threshold.json")
    rec = cal.main(["--features", dirs["train"], "--far", str(far), "--out", thr,
                    "--bootstrap", "100", "--per-camera-pair", "--min-pairs", "50"])
    assert rec["model_sha256"] == sha and rec["metric"] == "cosine"
    assert json.loads(open(thr).read())["threshold"] == rec["threshold"]
    out = str(tmp_path / "r.csv")
    res = search.main(["--gallery", dirs["gallery"], "--query", dirs["query"], "--topk", "10",
                       "--threshold", thr, "--no-progress", "--output", out, "--vis", "2",
                       "--vis-dir", str(tmp_path / "vis")])
    with open(out) as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"query", "rank", "gallery", "distance", "decision"}
    t = rec["threshold"]
    # (the CSV rounds to 6 significant digits)
    assert all(float(r["distance"]) <= t + 1e-5 for r in rows if r["decision"] == "match")
    no_match = {r["query"] for r in rows if r["decision"] == "no match"}
    assert res["info"]["no_match"] == len(no_match)
    top1 = {}
    for r in rows:
        if r["decision"] == "match" and r["rank"] == "1":
            top1[r["query"]] = r["gallery"]
    q_pid = {q: cal.labels_from_paths([q])[0][0] for q in query}
    held = [q for q in query if q_pid[q] == held_out]
    known = [q for q in query if q_pid[q] != held_out]
    held_no_match = np.mean([q in no_match for q in held])
    known_correct = np.mean([q in top1 and cal.labels_from_paths([top1[q]])[0][0] == q_pid[q]
                             for q in known])
    # the promise: a held-out query is wrongly accepted against one gallery image with
    # probability ~FAR, so it gets "no match" with probability ~(1 - FAR)^G (independence; >=
    # 1 - G FAR by the union bound); a known query's true matches are accepted with
    # probability ~TAR each, its top-1 is then correct unless a negative is closer
    g = len(gallery)
    promise = (1 - far) ** g
    print(f"held-out no match {held_no_match:.2f} (promise ~{promise:.2f}); known correct "
          f"{known_correct:.2f} (TAR {rec['tar']:.2f}, CI {rec['ci']['tar']}); threshold {t:.4f}")
    # sane bounds on 6 held-out and 24 known queries (about 2 binomial standard deviations of
    # slack, the queries of one vehicle are not independent: illustrative, not exact values)
    assert held_no_match >= promise - 0.35
    assert known_correct >= rec["ci"]["tar"][0] - 0.35
    assert len(res["vis"]) == 2 and all(os.path.isfile(v) for v in res["vis"])
    # JSON output with decisions
    js = str(tmp_path / "r.json")
    search.main(["--gallery", dirs["gallery"], "--query", dirs["query"], "--topk", "5",
                 "--threshold", str(t), "--no-progress", "--output", js])
    data = json.load(open(js))
    assert {r["decision"] for r in data["results"]} <= {"match", "no match"}
    assert sum(r["decision"] == "no match" for r in data["results"]) == len(no_match)
    # a threshold of another model is refused, naming both
    other = str(tmp_path / "other")
    extract.save_feature_shards(other, [(colour_features(gallery), gallery)], metric="cosine",
                                weights_sha256="d" * 64)
    with pytest.raises(ConfigError, match="cccccccccccccccc.*dddddddddddddddd"):
        search.main(["--gallery", other, "--query", dirs["query"], "--threshold", thr,
                     "--no-progress", "--output", js])


def test_calibrate_from_dataset_with_model(models, veri_root, datasets_root, tmp_path):  # noqa: F811
    """``--dataset VeRi --config-file C MODEL.WEIGHTS W``: the test split's images extracted with
    the model; the file records the weights' SHA-256 (hashlib here) and the split's pairs."""
    import hashlib

    cfg_path, weights, opts = models["bagtricks_r18"]
    datasets_root(veri_root)
    out = str(tmp_path / "t.json")
    rec = cal.main(["--dataset", "VeRi", "--config-file", cfg_path, "--far", "0.01", "--out",
                    out, "--bootstrap", "20", "MODEL.WEIGHTS", weights, *opts])
    assert rec["model_sha256"] == hashlib.sha256(open(weights, "rb").read()).hexdigest()
    paths = _images(veri_root, "image_query") + _images(veri_root, "image_test")
    pids, cams = map(np.array, cal.labels_from_paths(paths))
    i, j = np.triu_indices(len(paths), 1)
    keep = ~((pids[i] == pids[j]) & (cams[i] == cams[j]))
    assert rec["num_pos"] == (pids[i] == pids[j])[keep].sum()
    assert rec["num_pos"] + rec["num_neg"] == keep.sum()
    assert rec["source"]["dataset"] == "VeRi" and rec["far"] <= 0.01


def test_calibrate_cli_errors(tmp_path):
    with pytest.raises(ConfigError, match="--dataset needs --config-file"):
        cal.main(["--dataset", "VeRi", "--out", str(tmp_path / "t.json")])
    with pytest.raises(ConfigError, match="--far must be in"):
        cal.calibrate(np.eye(3), [1, 1, 2], [0, 1, 0], "cosine", 1.5)
    d = str(tmp_path / "f")
    extract.save_feature_shards(d, [(np.eye(3, dtype=np.float32), ["a.jpg", "b.jpg", "c.jpg"])])
    with pytest.raises(DatasetError, match="<pid>_c<camid>"):
        cal.main(["--features", d, "--out", str(tmp_path / "t.json")])
    from tests.test_extract import run_module

    res = run_module("fastreid_plugins.tools.calibrate", ["--features", d, "--out",
                                                          str(tmp_path / "t.json")], check=False)
    assert res.returncode == 2 and res.stderr.count("Error:") == 1
