"""SVRN end to end on the real 57-image VeRi-776 sample: the demo config learns from scratch
(loss falls, mAP from untrained to >= 90%) and ``--eval-only`` through
``fastreid_plugins.engine.main`` reproduces the trained model's metrics."""

import argparse
import os

import pytest

import fastreid_plugins  # noqa: F401
from fastreid_plugins.engine import PluginTrainer, WeightsMismatchError, main
from fastreid_plugins.svrn import add_svrn_config

from helpers import ROOT, evaluate, make_cfg, seed_everything, train

DEMO = "configs/demo/svrn.yml"


@pytest.fixture(scope="module")
def trained(veri_root, tmp_path_factory):
    """Train the demo config once for this module: (cfg, untrained metrics, metrics, losses)."""
    import fastreid.data.build as db
    import fastreid_plugins.engine as eng

    mp = pytest.MonkeyPatch()
    mp.setattr(db, "_root", veri_root)
    mp.setattr(eng, "_root", veri_root)
    out = str(tmp_path_factory.mktemp("svrn_demo"))
    cfg = make_cfg(DEMO, ["OUTPUT_DIR", out], [add_svrn_config])
    seed_everything(0)
    untrained = evaluate(cfg, PluginTrainer.build_model(
        make_cfg(DEMO, ["OUTPUT_DIR", out, "MODEL.HEADS.NUM_CLASSES", "4"], [add_svrn_config])))
    seed_everything(0)
    _, metrics, losses = train(cfg)
    yield cfg, untrained, metrics, losses, out
    mp.undo()


def test_demo_overfits_real_sample(trained):
    _, untrained, metrics, losses, out = trained
    n = max(3, len(losses) // 5)
    first, last = sum(losses[:n]) / n, sum(losses[-n:]) / n
    assert last < 0.6 * first, (first, last)
    assert untrained["mAP"] < 70.0, untrained
    assert metrics["mAP"] >= 90.0, (untrained, metrics)
    assert metrics["mAP"] > untrained["mAP"] + 20
    assert os.path.isfile(os.path.join(out, "model_final.pth"))


def test_eval_only_round_trip(trained, veri_root, datasets_root):
    datasets_root(veri_root)
    _, _, metrics, _, out = trained
    args = argparse.Namespace(
        config_file=os.path.join(ROOT, DEMO), eval_only=True, resume=False, num_gpus=1,
        num_machines=1, machine_rank=0, dist_url="auto",
        # the training config as is (NUM_CLASSES 0 = "from the training set"): the engine
        # sizes the classifiers from the checkpoint
        opts=["OUTPUT_DIR", os.path.join(out, "eval"), "MODEL.DEVICE", "cpu",
              "MODEL.WEIGHTS", os.path.join(out, "model_final.pth")])
    evaluated = main(args, add_svrn_config)
    for k in ("Rank-1", "mAP", "mINP"):
        assert evaluated[k] == pytest.approx(metrics[k], abs=1e-6), k


def test_eval_only_with_a_different_stage_count_lists_mismatched_keys(trained, veri_root,
                                                                      datasets_root):
    datasets_root(veri_root)
    _, _, _, _, out = trained
    args = argparse.Namespace(
        config_file=os.path.join(ROOT, DEMO), eval_only=True, resume=False, num_gpus=1,
        num_machines=1, machine_rank=0, dist_url="auto",
        opts=["OUTPUT_DIR", os.path.join(out, "eval2"), "MODEL.DEVICE", "cpu",
              "MODEL.HEADS.NUM_CLASSES", "4", "MODEL.SVRN.NUM_STAGES", "2",
              "MODEL.SVRN.START_BLOCKS", "[3]", "MODEL.SVRN.ALPHAS", "[0.2]",
              "MODEL.WEIGHTS", os.path.join(out, "model_final.pth")])
    with pytest.raises(WeightsMismatchError, match=r"branches\.1\.layer4"):
        main(args, add_svrn_config)
