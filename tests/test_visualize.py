"""Rank-list / CMC pictures on the real VeRi sample, and evaluation results in tensorboard.

The ground truth of every picture is read from the VeRi file names (``<pid>_c<cam>_...jpg``),
not from the tool's own JSON, and the border colours are read back from the PNG pixels.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from fastreid.modeling import build_model
from PIL import Image

import fastreid_plugins  # noqa: F401
from fastreid_plugins.tools import build_tool_cfg
from fastreid_plugins.tools import visualize as vis

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CFG = os.path.join(ROOT, "configs", "demo", "bagtricks_r18.yml")
SIZE = 96  # shown image size (px) used below
TOPK = 5


def veri_labels(path):
    """(pid, camera) from a VeRi file name such as ``0002_c002_00030600_0.jpg``."""
    pid, cam = os.path.basename(path).split("_")[:2]
    return int(pid), int(cam[1:])


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A seeded random BagTricks R18 (its rank lists mix right and wrong matches)."""
    cfg = build_tool_cfg(CFG, ["MODEL.HEADS.NUM_CLASSES", "4"])
    torch.manual_seed(0)
    path = str(tmp_path_factory.mktemp("vis_model") / "model.pth")
    torch.save({"model": build_model(cfg).state_dict()}, path)
    return path


def run_cli(args, datasets):
    env = dict(os.environ, FASTREID_DATASETS=datasets,
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "fastreid_plugins.tools.visualize", *args],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def check_pictures(out_dir, summary, expect_order):
    """Files, sizes and border colours of one run; returns the set of colours seen."""
    W, H = vis.canvas_size(TOPK, SIZE, SIZE)
    assert (W, H) == (2 * vis.PAD + 6 * (SIZE + 2 * vis.BORDER) + vis.QUERY_GAP + 4 * vis.GAP,
                      2 * vis.PAD + SIZE + 2 * vis.BORDER + vis.TEXT_H)
    seen = set()
    aps = []
    for q in summary["queries"]:
        img = np.asarray(Image.open(os.path.join(out_dir, q["file"])).convert("RGB"))
        assert img.shape == (H, W, 3)
        q_pid, q_cam = veri_labels(q["query"]["path"])
        # the caption names the camera as the file does (c012 -> "cam 12"), not FastReID's
        # 0-based camid (11)
        assert q["query"]["caption"] == [f"query id {q_pid}", f"cam {q_cam}"]
        assert q["query"]["camid"] == q_cam - 1
        x0, y0, x1, y1 = q["query"]["box"]
        assert tuple(img[y0 + 1, x0 + 1]) == vis.QUERY_COLOR
        assert len(q["gallery"]) == TOPK
        dists = [g["dist"] for g in q["gallery"]]
        assert dists == sorted(dists)  # ranked by distance
        for g in q["gallery"]:
            g_pid, g_cam = veri_labels(g["path"])
            assert not (g_pid == q_pid and g_cam == q_cam)  # junk is never shown
            want = vis.MATCH_COLOR if g_pid == q_pid else vis.NONMATCH_COLOR
            x0, y0, x1, y1 = g["box"]
            assert (x1 - x0, y1 - y0) == (SIZE + 2 * vis.BORDER,) * 2
            # all four borders, read back from the decoded PNG
            for y, x in [(y0 + 1, (x0 + x1) // 2), (y1 - 2, (x0 + x1) // 2),
                         ((y0 + y1) // 2, x0 + 1), ((y0 + y1) // 2, x1 - 2)]:
                assert tuple(img[y, x]) == want, (g["path"], q["query"]["path"])
            # inside the border: the vehicle picture, not the border colour
            assert tuple(img[(y0 + y1) // 2, (x0 + x1) // 2]) != want
            seen.add(want)
        aps.append(q["ap"])
    if expect_order == "best":
        assert aps == sorted(aps, reverse=True)
    elif expect_order == "worst":
        assert aps == sorted(aps)
    m = summary["metrics"]
    assert summary["cmc_title"].endswith(f"Rank-1: {m['Rank-1']:.1f}%   mAP: {m['mAP']:.1f}%   "
                                         f"mINP: {m['mINP']:.1f}%")
    cmc = Image.open(os.path.join(out_dir, "cmc.png"))
    assert cmc.size == (640, 480) and cmc.format == "PNG"
    return seen


@pytest.mark.slow
def test_visualize_real_sample(weights, veri_root, datasets_root, tmp_path):
    # 1) the command line, as a user runs it: worst queries
    out_w = str(tmp_path / "worst")
    res = run_cli(["--config-file", CFG, "--num-queries", "4", "--topk", str(TOPK), "--mode",
                   "worst", "--size", str(SIZE), str(SIZE), "--output", out_w,
                   "MODEL.WEIGHTS", weights, "MODEL.HEADS.NUM_CLASSES", "4"], veri_root)
    # stderr is a pipe, not a terminal: no tqdm bar lines in it (issue 27: bars never reach a
    # log file); the model print goes to OUTPUT/log.txt, one line on the console
    assert "visualize: features" not in res.stderr and "%|" not in res.stderr
    assert "(cls_layer)" not in res.stderr + res.stdout
    with open(os.path.join(out_w, "log.txt")) as f:
        assert "(cls_layer)" in f.read()
    with open(os.path.join(out_w, "ranklists.json")) as f:
        worst = json.load(f)
    assert sorted(os.listdir(out_w)) == sorted(
        ["cmc.png", "ranklists.json", "log.txt"] + [q["file"] for q in worst["queries"]])
    assert len(worst["queries"]) == 4
    seen = check_pictures(out_w, worst, "worst")

    # 2) in-process, best queries
    datasets_root(veri_root)
    out_b = str(tmp_path / "best")
    best = vis.main(["--config-file", CFG, "--num-queries", "4", "--topk", str(TOPK), "--mode",
                     "best", "--size", str(SIZE), str(SIZE), "--output", out_b,
                     "MODEL.WEIGHTS", weights, "MODEL.HEADS.NUM_CLASSES", "4"])
    seen |= check_pictures(out_b, best, "best")
    # both colours occur, so the colour check above is not vacuous
    assert seen == {vis.MATCH_COLOR, vis.NONMATCH_COLOR}
    assert best["queries"][0]["ap"] >= worst["queries"][0]["ap"]

    # 3) the metrics and CMC are the evaluator's (same model, same test set)
    from fastreid_plugins.engine import PluginTrainer, load_model_weights

    cfg = build_tool_cfg(CFG, ["MODEL.HEADS.NUM_CLASSES", "4"])
    model = build_model(cfg)
    load_model_weights(model, weights)
    ref = PluginTrainer.test(cfg, model)
    for k in ("Rank-1", "Rank-5", "mAP", "mINP"):
        assert best["metrics"][k] == pytest.approx(ref[k], abs=1e-6)
    assert best["cmc"][0] * 100 == pytest.approx(ref["Rank-1"], abs=1e-4)


def test_select_queries_by_ap():
    ap = np.array([0.5, 1.0, 0.2, 1.0, 0.7])
    idx = np.array([3, 8, 9, 11, 20])
    assert vis.select_queries(ap, idx, 3, "best") == [(8, 1.0), (11, 1.0), (20, 0.7)]
    assert vis.select_queries(ap, idx, 2, "worst") == [(9, 0.2), (3, 0.5)]
    rnd = vis.select_queries(ap, idx, 10, "random", seed=1)
    assert sorted(q for q, _ in rnd) == sorted(idx.tolist())  # capped at 5, no repeats
    assert rnd == vis.select_queries(ap, idx, 10, "random", seed=1)  # seeded
    with pytest.raises(ValueError, match="--mode"):
        vis.select_queries(ap, idx, 2, "median")


def test_camera_label_is_the_file_names_camera():
    # FastReID's VeRi loader: camid = c - 1; the caption shows the dataset's camera name
    assert vis.camera_label("/d/veri/image_query/0002_c012_00030600_0.jpg", 11) == \
        ("cam 12", "file name")
    assert vis.camera_label("c012_x.jpg", 11) == ("cam 12", "file name")
    # no camera in the name (VehicleID, VERI-Wild): FastReID's index + 1, marked with '#'
    assert vis.camera_label("/d/vehicleid/image/0001234.jpg", 3) == ("cam #4", "camid + 1")
    assert vis.cmc_title("VeRi", {"Rank-1": 66.66, "mAP": 60.0, "mINP": 50.04}) == \
        "CMC on VeRi:  Rank-1: 66.7%   mAP: 60.0%   mINP: 50.0%"


def test_visualize_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="--topk"):
        vis.main(["--config-file", CFG, "--topk", "0", "MODEL.WEIGHTS", "x.pth"])
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS"):
        vis.main(["--config-file", CFG, "--output", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="config-file"):
        vis.main(["--config-file", str(tmp_path / "none.yml"), "MODEL.WEIGHTS", "x.pth"])


# ------------------------------------------------------------------ evaluation -> tensorboard
@pytest.fixture(scope="module")
def tb_run(veri_root, tmp_path_factory):
    """Train the demo BagTricks for 2 epochs, evaluating after each; read tensorboard back."""
    import fastreid.data.build as db
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from tests.helpers import make_cfg, seed_everything, train

    out = str(tmp_path_factory.mktemp("tb"))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(db, "_root", veri_root)
        mp.setenv("FASTREID_DATASETS", veri_root)
        seed_everything(0)
        cfg = make_cfg("configs/demo/bagtricks_r18.yml",
                       ["SOLVER.MAX_EPOCH", "2", "TEST.EVAL_PERIOD", "1", "OUTPUT_DIR", out,
                        "SOLVER.CHECKPOINT_PERIOD", "100"])
        trainer, results, _ = train(cfg)
    events = EventAccumulator(out)
    events.Reload()
    scalars = {t: [(e.step, e.value) for e in events.Scalars(t)]
               for t in events.Tags()["scalars"]}
    return trainer, results, scalars


@pytest.mark.slow
def test_tensorboard_has_eval_metrics_and_loss_curve(tb_run):
    trainer, results, scalars = tb_run
    iters = trainer.iters_per_epoch
    # the loss curve: one point per epoch at least, equal to what the trainer logged
    loss = scalars["total_loss"]
    assert len(loss) >= 2 and [s for s, _ in loss] == sorted(s for s, _ in loss)
    # FastReID's writer logs the median of the last <= 20 logged values (smoothing hint)
    hist = [(it, v) for v, it in trainer.storage.history("total_loss").values()]
    for step, value in loss:
        upto = [v for it, v in hist if it <= step][-20:]
        assert value == pytest.approx(float(np.median(upto)), rel=1e-5)
    # evaluation after the first epoch, stored at that epoch's last iteration
    for key in ("mAP", "Rank-1", "mINP"):
        assert key in scalars, f"{key} missing from tensorboard: {sorted(scalars)}"
        step, value = scalars[key][0]
        assert step == iters - 1 and 0.0 <= value <= 100.0


@pytest.mark.slow
def test_tensorboard_has_final_evaluation(tb_run):
    trainer, results, scalars = tb_run
    for key in ("mAP", "Rank-1", "mINP"):
        steps = [s for s, _ in scalars.get(key, [])]
        assert len(steps) == 2, f"{key}: evaluations at steps {steps}, expected 2 (one per epoch)"
        assert scalars[key][-1][1] == pytest.approx(results[key], abs=1e-3)
