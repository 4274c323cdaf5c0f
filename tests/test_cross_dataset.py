"""Train on one dataset, test on several (``DATASETS.TESTS`` mixing VeRi-776, VehicleID,
VERI-Wild and VRIC): one results table, ranking and verification side by side, the VehicleID
protocol where it applies, the numbers in tensorboard's event storage.

Data: the real VeRi sample (train + test) and tiny generated VehicleID / VERI-Wild / VRIC layouts
in their official formats.
"""

import csv
import json
import os

import numpy as np
import pytest
from PIL import Image

from fastreid_plugins.evaluation.summary import results_table, table_columns
from tests.test_data_vehicleid import write_vehicleid
from tests.test_data_vric import write_vric


def write_veriwild(root, n_id=4, per=4, cams=3):
    """``root/VERI-Wild`` in the official layout (images/<vid>/<imgid>.jpg, vehicle_info.txt,
    the 3000-identity test lists of ``SmallVeRiWild``); every vehicle its own colour."""
    d = os.path.join(root, "VERI-Wild")
    split = os.path.join(d, "train_test_split")
    os.makedirs(split, exist_ok=True)
    rng = np.random.default_rng(0)
    info, query, gallery, train = ["id/image;camera;time;model;type;color"], [], [], []
    k = 0
    for vid in range(1, n_id + 1):
        os.makedirs(os.path.join(d, "images", f"{vid:05d}"), exist_ok=True)
        colour = rng.integers(0, 255, 3)
        for j in range(per):
            k += 1
            img = f"{k:06d}"
            px = np.clip(colour + rng.integers(-10, 10, (20, 24, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(os.path.join(d, "images", f"{vid:05d}", img + ".jpg"))
            info.append(f"{vid:05d}/{img};{j % cams};2017-01-01;m;t;c")
            (query if j == 0 else gallery).append(f"{vid:05d}/{img}")
            train.append(f"{vid:05d}/{img}")
    for name, lines in (("vehicle_info.txt", info), ("test_3000_query.txt", query),
                        ("test_3000.txt", gallery), ("train_list.txt", train)):
        with open(os.path.join(split, name), "w") as f:
            f.write("\n".join(lines) + "\n")
    return d


def test_results_table_by_hand():
    res = {"VeRi": {"Rank-1": 50.0, "mAP": 40.0, "AUC": 90.0},
           "SmallVehicleID": {"Rank-1": 75.0, "mAP": 70.0, "mAP_std": 1.5, "AUC": 95.0}}
    assert table_columns(res) == ["Rank-1", "mAP", "AUC", "mAP_std"]
    lines = results_table(res).splitlines()
    assert len(lines) == 4 and "Dataset" in lines[0] and "mAP_std" in lines[0]
    assert lines[2].split("|")[1].strip() == "VeRi" and lines[2].split("|")[-2].strip() == "-"
    assert "1.50" in lines[3]


def test_train_on_veri_test_on_four(veri_root, datasets_root, tmp_path):
    from fastreid_plugins.engine import PluginTrainer
    from tests.helpers import make_cfg

    root = str(tmp_path / "data")
    os.makedirs(root)
    os.symlink(os.path.join(veri_root, "veri"), os.path.join(root, "veri"))
    write_vehicleid(root)
    write_veriwild(root)
    write_vric(root)
    datasets_root(root)
    out = str(tmp_path / "out")
    tests = ("VeRi", "SmallVehicleID", "SmallVeRiWild", "VRIC")
    cfg = make_cfg("configs/demo/bagtricks_r18.yml",
                   ["DATASETS.TESTS", str(tests), "INPUT.SIZE_TRAIN", "[32,32]",
                    "INPUT.SIZE_TEST", "[32,32]", "SOLVER.MAX_EPOCH", "1",
                    "SOLVER.AMP.ENABLED", "False", "TEST.VEHICLEID.NUM_TRIALS", "2",
                    "TEST.VERIFICATION.ENABLED", "True", "OUTPUT_DIR", out])
    trainer = PluginTrainer(cfg)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    assert list(results) == list(tests)
    for name in tests:
        r = results[name]
        for k in ("Rank-1", "mAP", "mINP", "TAR@1e-2", "EER", "AUC"):
            assert 0 <= r[k] <= 100, (name, k)
        saved = json.load(open(os.path.join(out, f"{name}_results.json")))
        assert saved["protocol"] == ("vehicleid" if name == "SmallVehicleID" else "standard")
        assert saved["verification"]["cosine"]["num_pos"] > 0
        assert os.path.isfile(os.path.join(out, f"{name}_verification.png"))
    assert "mAP_std" in results["SmallVehicleID"] and "mAP_std" not in results["VeRi"]
    # VehicleID: each of the 2 trials pairs its queries with one gallery image per identity
    # (4 identities x 3 images: 8 queries x 4 gallery, 8 positive pairs per trial)
    v = json.load(open(os.path.join(out, "SmallVehicleID_results.json")))["verification"]
    assert v["cosine"]["num_pos"] == 2 * 8 and v["cosine"]["num_neg"] == 2 * 8 * 3
    with open(os.path.join(out, "results_table.csv")) as f:
        rows = list(csv.DictReader(f))
    assert [r["dataset"] for r in rows] == list(tests)
    for r in rows:
        assert float(r["AUC"]) == pytest.approx(results[r["dataset"]]["AUC"])
        assert float(r["mAP"]) == pytest.approx(results[r["dataset"]]["mAP"])
    # tensorboard: EvalHook puts the flattened results into the event storage
    hist = trainer.storage.histories()
    for name in tests:
        assert f"{name}/AUC" in hist and f"{name}/TAR@1e-3" in hist
