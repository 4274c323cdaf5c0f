"""CLIP-SENet end to end on the real VeRi sample: overfit (loss falls, mAP rises to >= 90 %) and the
``--eval-only`` round trip through ``fastreid_plugins.engine.main``."""

import logging
import os

import pytest

import fastreid_plugins  # noqa: F401
from fastreid_plugins.clip_senet import CLIPSENetTrainer, add_clip_senet_config
from fastreid_plugins.engine import default_argument_parser, main, setup
from tests.helpers import ROOT, seed_everything

DEMO = "configs/demo/clip_senet.yml"


@pytest.fixture(scope="module")
def trained(veri_root, tmp_path_factory):
    """Train the demo config once (module scope); returns what the tests need."""
    mp = pytest.MonkeyPatch()
    import fastreid.data.build as db
    mp.setattr(db, "_root", veri_root)
    mp.setenv("FASTREID_DATASETS", veri_root)
    out = str(tmp_path_factory.mktemp("clip_senet_demo"))
    logging.getLogger("fastreid").setLevel(logging.WARNING)
    seed_everything(0)  # whatever came before: setup seeds every generator with SEED (3407)
    cfg = setup(default_argument_parser().parse_args(
        ["--config-file", os.path.join(ROOT, DEMO), "MODEL.DEVICE", "cpu", "OUTPUT_DIR", out]),
        add_clip_senet_config)
    assert cfg.SEED == 3407
    logging.getLogger("fastreid").setLevel(logging.WARNING)
    trainer = CLIPSENetTrainer(cfg)
    before = dict(CLIPSENetTrainer.test(trainer.cfg, trainer.model))
    trainer.resume_or_load(resume=False)
    after = dict(trainer.train())
    losses = [v for v, _ in trainer.storage.history("total_loss").values()]
    yield {"out": out, "before": before, "after": after, "losses": losses, "trainer": trainer}
    mp.undo()


@pytest.mark.slow
def test_overfit_real_sample(trained):
    losses, before, after = trained["losses"], trained["before"], trained["after"]
    n = max(1, len(losses) // 5)
    first, last = sum(losses[:n]) / n, sum(losses[-n:]) / n
    print(f"\nCLIP-SENet demo: loss {first:.3f} -> {last:.3f} over {len(losses)} iterations; "
          f"mAP {before['mAP']:.1f} -> {after['mAP']:.1f}, Rank-1 {before['Rank-1']:.1f} -> "
          f"{after['Rank-1']:.1f}")
    assert last < 0.7 * first
    assert after["mAP"] >= 90.0
    assert after["mAP"] > before["mAP"] + 10
    # the side information was in the training batches
    batch = next(iter(trained["trainer"].data_loader))
    assert {"viewids", "sie_camids"} <= set(batch)


@pytest.mark.slow
def test_eval_only_round_trip(trained, tmp_path):
    """Evaluate the saved checkpoint through engine.main --eval-only with the run's config.yaml."""
    weights = os.path.join(trained["out"], "model_final.pth")
    config = os.path.join(trained["out"], "config.yaml")  # FastReID dumps it with NUM_CLASSES set
    assert os.path.isfile(weights) and os.path.isfile(config)
    args = default_argument_parser().parse_args(
        ["--config-file", config, "--eval-only", "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu",
         "OUTPUT_DIR", str(tmp_path)])
    res = main(args, add_clip_senet_config, trainer_cls=CLIPSENetTrainer)
    res = res.get("VeRiViewpoint", res)
    for key in ("mAP", "Rank-1", "mINP"):
        assert res[key] == pytest.approx(trained["after"][key], abs=1e-6)
    # a checkpoint that does not match the configured model is refused, naming the keys
    from fastreid_plugins.engine import WeightsMismatchError
    bad = default_argument_parser().parse_args(
        ["--config-file", config, "--eval-only", "MODEL.WEIGHTS", weights, "MODEL.DEVICE", "cpu",
         "OUTPUT_DIR", str(tmp_path), "MODEL.CLIPSENET.AFEM.ENABLED", "False"])
    with pytest.raises(WeightsMismatchError, match="afem"):
        main(bad, add_clip_senet_config, trainer_cls=CLIPSENetTrainer)


def test_train_net_script_exists():
    from tests.ddp_jobs import project
    # what the script runs: launch_main("clip_senet"), i.e. the record's add_config and trainer
    assert project("CLIPSENet") == (add_clip_senet_config, CLIPSENetTrainer)
