"""FastReID's VehicleID loaders on a tiny generated layout, and the plugins' VehicleID protocol.

Protocol (Liu et al., "Deep Relative Distance Learning", CVPR 2016): per trial one random image
per test identity forms the gallery, all other images are queries; results are averaged over
``TEST.VEHICLEID.NUM_TRIALS`` seeded trials (``TEST.VEHICLEID.SEED + t``).
"""

import json
import os

import numpy as np
import pytest
import torch
from fastreid.data.datasets import DATASET_REGISTRY
from PIL import Image

import fastreid_plugins  # noqa: F401
from fastreid_plugins.config import get_cfg
from fastreid_plugins.evaluation.evaluator import VehicleReidEvaluator, vehicleid_split

TRAIN = [(f"{i:07d}", vid) for i, vid in enumerate([1, 1, 2, 2, 3, 3], start=1)]
# test_list_800: 4 identities x 3 images; test_list_13164: 6 identities x 3 images
TEST_800 = [(f"{100 + k:07d}", 10 + k // 3) for k in range(12)]
TEST_ALL = TEST_800 + [(f"{200 + k:07d}", 14 + k // 3) for k in range(6)]
HUES = {10: (220, 30, 30), 11: (30, 200, 40), 12: (40, 60, 220), 13: (230, 220, 40),
        14: (200, 40, 200), 15: (40, 210, 210), 1: (90, 90, 90), 2: (160, 160, 160),
        3: (20, 20, 20)}


def write_vehicleid(root):
    """``root/vehicleid`` in the official layout; every vehicle has its own colour."""
    d = os.path.join(root, "vehicleid")
    os.makedirs(os.path.join(d, "image"), exist_ok=True)
    os.makedirs(os.path.join(d, "train_test_split"), exist_ok=True)
    rng = np.random.default_rng(0)
    for imgid, vid in TRAIN + TEST_ALL:
        px = np.clip(np.array(HUES[vid]) + rng.integers(-12, 12, size=(20, 24, 3)), 0, 255)
        Image.fromarray(px.astype(np.uint8)).save(os.path.join(d, "image", f"{imgid}.jpg"))
    for name, rows in (("train_list.txt", TRAIN), ("test_list_800.txt", TEST_800),
                       ("test_list_13164.txt", TEST_ALL)):
        with open(os.path.join(d, "train_test_split", name), "w") as f:
            f.write("".join(f"{i} {v}\n" for i, v in rows))
    return d


# ------------------------------------------------------------------ loaders
def test_vehicleid_train_items(tmp_path):
    d = write_vehicleid(str(tmp_path))
    ds = DATASET_REGISTRY.get("VehicleID")(root=str(tmp_path))
    # FastReID: pid "vehicleid_<vid>", camid "vehicleid_<image id>" (every image its own camera)
    assert ds.train == [(os.path.join(d, "image", f"{i}.jpg"), f"vehicleid_{v}",
                         f"vehicleid_{int(i)}") for i, v in TRAIN]


@pytest.mark.parametrize("name, rows", [("SmallVehicleID", TEST_800), ("VehicleID", TEST_ALL)])
def test_vehicleid_test_items(tmp_path, name, rows):
    d = write_vehicleid(str(tmp_path))
    ds = DATASET_REGISTRY.get(name)(root=str(tmp_path))
    expected = sorted((os.path.join(d, "image", f"{i}.jpg"), v, int(i)) for i, v in rows)
    assert sorted(ds.query + ds.gallery) == expected
    # FastReID's single draw: one gallery image per identity, the rest are queries
    g_pids = [p for _, p, _ in ds.gallery]
    assert sorted(g_pids) == sorted({v for _, v in rows})
    assert len(ds.query) == len(rows) - len(g_pids)


# ------------------------------------------------------------------ the split
PIDS = np.repeat(np.arange(20), 4)
PIDS = np.concatenate([PIDS, [20]])  # an identity with a single image


def test_split_one_gallery_image_per_identity():
    q, g = vehicleid_split(PIDS, np.random.default_rng(0))
    assert sorted(PIDS[g].tolist()) == list(range(21))
    assert sorted(np.concatenate([q, g]).tolist()) == list(range(len(PIDS)))
    assert 20 not in PIDS[q]  # its only image is in the gallery


def test_split_reproducible_and_seed_dependent():
    a = vehicleid_split(PIDS, np.random.default_rng(5))
    b = vehicleid_split(PIDS, np.random.default_rng(5))
    c = vehicleid_split(PIDS, np.random.default_rng(6))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])


# ------------------------------------------------------------------ the evaluator
def _cfg(trials, seed):
    cfg = get_cfg()
    cfg.TEST.VEHICLEID.NUM_TRIALS = trials
    cfg.TEST.VEHICLEID.SEED = seed
    cfg.TEST.METRIC = "euclidean"
    return cfg


def _run(cfg, feats, pids, out=""):
    ev = VehicleReidEvaluator(cfg, 0, out, dataset_name="SmallVehicleID", protocol="vehicleid")
    half = len(pids) // 2
    for sl in (slice(0, half), slice(half, None)):
        ev.process({"targets": torch.as_tensor(pids[sl]), "camids": torch.zeros(len(pids[sl]))},
                   torch.as_tensor(feats[sl]))
    return ev.evaluate()


def _reference_trial(feats, pids, q, g):
    """Independent metrics for one draw: each query has exactly one true match in the gallery,
    so AP = INP = 1 / (rank of that match) and Rank-k = [rank <= k]."""
    ranks = []
    for i in q:
        d = np.linalg.norm(feats[g] - feats[i], axis=1)
        true = d[pids[g] == pids[i]]
        assert len(true) == 1
        ranks.append(1 + int(np.sum(d < true[0])))
    ranks = np.array(ranks)
    return {"Rank-1": 100 * np.mean(ranks <= 1), "Rank-5": 100 * np.mean(ranks <= 5),
            "mAP": 100 * np.mean(1.0 / ranks), "mINP": 100 * np.mean(1.0 / ranks)}


@pytest.fixture(scope="module")
def noisy_feats():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(21, 16))
    return (centres[PIDS] + 1.2 * rng.normal(size=(len(PIDS), 16))).astype(np.float32)


def test_evaluator_mean_std_over_trials(noisy_feats, tmp_path):
    trials, seed = 5, 7
    res = _run(_cfg(trials, seed), noisy_feats, PIDS, out=str(tmp_path))
    per = [_reference_trial(noisy_feats, PIDS,
                            *vehicleid_split(PIDS, np.random.default_rng(seed + t)))
           for t in range(trials)]
    for k in ("Rank-1", "Rank-5", "mAP", "mINP"):
        assert res[k] == pytest.approx(np.mean([p[k] for p in per]), abs=1e-4), k
    for k in ("Rank-1", "Rank-5", "mAP"):
        assert res[f"{k}_std"] == pytest.approx(np.std([p[k] for p in per]), abs=1e-4), k
    assert res["mAP_std"] > 0  # the trials really differ
    with open(tmp_path / "SmallVehicleID_results.json") as f:
        saved = json.load(f)
    assert saved["protocol"] == "vehicleid" and saved["mAP"] == pytest.approx(res["mAP"])


def test_evaluator_reproducible_and_seed_dependent(noisy_feats):
    a = _run(_cfg(3, 0), noisy_feats, PIDS)
    b = _run(_cfg(3, 0), noisy_feats, PIDS)
    c = _run(_cfg(3, 100), noisy_feats, PIDS)
    assert a == b
    assert a["mAP"] != c["mAP"]


def test_evaluator_rejects_zero_trials(noisy_feats):
    with pytest.raises(ValueError, match="NUM_TRIALS"):
        _run(_cfg(0, 0), noisy_feats, PIDS)


# ------------------------------------------------------------------ end to end through the trainer
class MeanColour(torch.nn.Module):
    """A 'model' whose feature is the image's mean colour (B, 3)."""

    def __init__(self):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def forward(self, batch):
        return batch["images"].float().mean(dim=(2, 3)) + 0 * self.dummy


def test_trainer_vehicleid_protocol_end_to_end(tmp_path, datasets_root):
    from fastreid_plugins.engine import PluginTrainer
    from tests.helpers import evaluate, make_cfg

    write_vehicleid(str(tmp_path))
    datasets_root(str(tmp_path))
    cfg = make_cfg("configs/demo/bagtricks_r18.yml",
                   ["DATASETS.TESTS", '("SmallVehicleID",)', "INPUT.SIZE_TEST", "[16,16]",
                    "TEST.METRIC", "euclidean", "TEST.VEHICLEID.NUM_TRIALS", "4",
                    "OUTPUT_DIR", str(tmp_path / "out")])
    loader, evaluator = PluginTrainer.build_evaluator(cfg, "SmallVehicleID")
    seen = [p for batch in loader for p in batch["img_paths"]]
    assert sorted(seen) == sorted(os.path.join(str(tmp_path), "vehicleid", "image", f"{i}.jpg")
                                  for i, _ in TEST_800)  # every test image exactly once
    res = evaluate(cfg, MeanColour())
    # each vehicle has its own colour: a perfect ranking in every trial
    assert res["mAP"] == pytest.approx(100.0) and res["Rank-1"] == pytest.approx(100.0)
    assert res["mAP_std"] == pytest.approx(0.0)
    assert json.load(open(tmp_path / "out" / "SmallVehicleID_results.json"))["protocol"] \
        == "vehicleid"
