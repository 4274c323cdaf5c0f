"""SVRN end to end on the real 57-image VeRi-776 sample: the demo config, seeded by the shared
``SEED`` key through ``engine.setup`` and :class:`PluginTrainer` as ``projects/SVRN/train_net.py``
runs it, learns from scratch (loss falls, mAP from untrained to the README's level),
``--eval-only`` through ``fastreid_plugins.engine.main`` reproduces the trained model's metrics,
and the other test descriptors evaluate from the same checkpoint."""

import argparse
import logging
import os

import pytest
from helpers import ROOT, evaluate, make_cfg, seed_everything

import fastreid_plugins  # noqa: F401
from fastreid_plugins.engine import PluginTrainer, WeightsMismatchError, main, setup
from fastreid_plugins.svrn import add_svrn_config

DEMO = "configs/demo/svrn.yml"


# every test uses the module's demo training run (~1-2 min)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def trained(veri_root, tmp_path_factory):
    """Train the demo config once for this module: (cfg, untrained metrics, metrics, losses)."""
    import fastreid.data.build as db

    mp = pytest.MonkeyPatch()
    mp.setattr(db, "_root", veri_root)
    mp.setenv("FASTREID_DATASETS", veri_root)
    out = str(tmp_path_factory.mktemp("svrn_demo"))
    seed_everything(0)
    untrained = evaluate(make_cfg(DEMO, ["OUTPUT_DIR", out], [add_svrn_config]),
                         PluginTrainer.build_model(make_cfg(
                             DEMO, ["OUTPUT_DIR", out, "MODEL.HEADS.NUM_CLASSES", "4"],
                             [add_svrn_config])))
    # the CLI's path (engine.main): setup seeds every generator with the config's SEED (0),
    # whatever came before, then PluginTrainer builds the model and the seeded loaders
    seed_everything(123)
    cfg = setup(argparse.Namespace(config_file=os.path.join(ROOT, DEMO), eval_only=False,
                                   resume=False, opts=["OUTPUT_DIR", out, "MODEL.DEVICE", "cpu"]),
                add_svrn_config)
    assert cfg.SEED == 0
    logging.getLogger("fastreid").setLevel(logging.WARNING)
    trainer = PluginTrainer(cfg)
    trainer.resume_or_load(resume=False)
    metrics = dict(trainer.train())
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    yield cfg, untrained, metrics, losses, out
    mp.undo()


def test_demo_overfits_real_sample(trained):
    _, untrained, metrics, losses, out = trained
    n = max(3, len(losses) // 5)
    first, last = sum(losses[:n]) / n, sum(losses[-n:]) / n
    print(f"\nSVRN demo: loss {first:.3f} -> {last:.3f} over {len(losses)} iterations; mAP "
          f"{untrained['mAP']:.2f} -> {metrics['mAP']:.2f}, Rank-1 {metrics['Rank-1']:.2f}, "
          f"mINP {metrics['mINP']:.2f}")
    assert last < 0.6 * first, (first, last)
    assert untrained["mAP"] < 70.0, untrained
    # README: SEED 0 gives mAP 98.92 with one thread (the CLI command); the bar leaves room for
    # other seeds and thread counts (seeds 1 / 2: 94.74 / 99.05), whose float rounding can move a
    # top-n salience cut
    assert metrics["mAP"] >= 80.0, (untrained, metrics)
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


@pytest.mark.parametrize("feat", ["gap_l2", "unified"])
def test_other_test_descriptors_evaluate_from_the_same_checkpoint(trained, veri_root,
                                                                  datasets_root, feat):
    """Sec. III-C's sum of F_t is the default; the sums of L2-normalised F_t and of the unified
    G_t evaluate from the same checkpoint with one --eval-only override (the unit test
    ``test_descriptor_options_from_one_checkpoint`` checks the features themselves)."""
    datasets_root(veri_root)
    _, untrained, metrics, _, out = trained
    args = argparse.Namespace(
        config_file=os.path.join(ROOT, DEMO), eval_only=True, resume=False, num_gpus=1,
        num_machines=1, machine_rank=0, dist_url="auto",
        opts=["OUTPUT_DIR", os.path.join(out, f"eval_{feat}"), "MODEL.DEVICE", "cpu",
              "MODEL.SVRN.EVAL_FEAT", feat, "MODEL.WEIGHTS", os.path.join(out, "model_final.pth")])
    evaluated = main(args, add_svrn_config)
    assert evaluated["mAP"] > untrained["mAP"] + 10, (feat, evaluated)


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
