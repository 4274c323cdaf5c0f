"""Engine: --eval-only round trip, strict weight loading, config errors, trainer guards."""

import argparse
import json
import os

import pytest
import torch
from helpers import ROOT, make_cfg

import fastreid_plugins  # noqa: F401
from fastreid_plugins.engine import (
    PluginTrainer,
    WeightsMismatchError,
    load_model_weights,
    main,
    setup,
)
from fastreid_plugins.modeling import build_backbone

CFG = os.path.join(ROOT, "configs/demo/bagtricks_r18.yml")


def _args(*opts, eval_only=False, config=CFG):
    return argparse.Namespace(config_file=config, eval_only=eval_only, resume=False, num_gpus=1,
                              num_machines=1, machine_rank=0, dist_url="auto", opts=list(opts))


@pytest.mark.slow
def test_eval_only_round_trip_reproduces_training_metrics(veri_root, datasets_root, tmp_path):
    datasets_root(veri_root)
    out = str(tmp_path / "run")
    common = ["SOLVER.MAX_EPOCH", "3", "TEST.EVAL_PERIOD", "3", "OUTPUT_DIR", out]
    trained = main(_args(*common))
    weights = os.path.join(out, "model_final.pth")
    assert os.path.isfile(weights)
    saved = json.load(open(os.path.join(out, "VeRi_results.json")))
    evaluated = main(_args(*common, "MODEL.WEIGHTS", weights, eval_only=True))
    for k in ("Rank-1", "mAP", "mINP"):
        assert evaluated[k] == pytest.approx(trained[k], abs=1e-6), k
        assert saved[k] == pytest.approx(trained[k], abs=1e-6), k


def test_eval_only_without_or_with_missing_weights_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="MODEL.WEIGHTS"):
        main(_args("OUTPUT_DIR", str(tmp_path), eval_only=True))
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        main(_args("OUTPUT_DIR", str(tmp_path), "MODEL.WEIGHTS", str(tmp_path / "nope.pth"),
                   eval_only=True))


def test_mismatched_checkpoint_lists_the_keys(tmp_path):
    cfg = make_cfg(CFG, ["MODEL.HEADS.NUM_CLASSES", "4"])
    model = PluginTrainer.build_model(cfg)
    state = model.state_dict()
    state.pop("backbone.conv1.weight")
    state["extra.weight"] = torch.zeros(1)
    state["heads.weight"] = torch.zeros(7, 512)
    path = tmp_path / "bad.pth"
    torch.save({"model": state}, path)
    with pytest.raises(WeightsMismatchError) as e:
        load_model_weights(model, str(path))
    msg = str(e.value)
    assert "backbone.conv1.weight" in msg and "extra.weight" in msg
    assert "heads.weight: checkpoint (7, 512) vs model (4, 512)" in msg


def test_strict_load_accepts_module_prefix_and_bare_state_dict(tmp_path):
    cfg = make_cfg(CFG, ["MODEL.HEADS.NUM_CLASSES", "4"])
    src, dst = PluginTrainer.build_model(cfg), PluginTrainer.build_model(cfg)
    torch.save({"module." + k: v for k, v in src.state_dict().items()}, tmp_path / "m.pth")
    load_model_weights(dst, str(tmp_path / "m.pth"))
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values()):
        assert torch.equal(a, b), k


def test_missing_config_file_and_cpu_device(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such.yml"):
        setup(_args(config=str(tmp_path / "no_such.yml")))
    cfg = setup(_args("OUTPUT_DIR", str(tmp_path)))
    if not torch.cuda.is_available():
        assert cfg.MODEL.DEVICE == "cpu"


def test_eval_only_turns_pretrain_off(tmp_path):
    cfg = setup(_args("OUTPUT_DIR", str(tmp_path), "MODEL.BACKBONE.PRETRAIN", "True",
                      eval_only=True))
    assert cfg.MODEL.BACKBONE.PRETRAIN is False


def test_batch_larger_than_dataset_is_refused(veri_root, datasets_root, tmp_path):
    datasets_root(veri_root)
    cfg = make_cfg(CFG, ["SOLVER.IMS_PER_BATCH", "64",
                         "DATALOADER.SAMPLER_TRAIN", "TrainingSampler",
                         "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(ValueError, match="IMS_PER_BATCH"):
        PluginTrainer(cfg)


def test_pretrain_path_that_does_not_exist(tmp_path):
    cfg = make_cfg(CFG, ["MODEL.BACKBONE.PRETRAIN", "True",
                         "MODEL.BACKBONE.PRETRAIN_PATH", str(tmp_path / "r18.pth")])
    with pytest.raises(FileNotFoundError, match="r18.pth"):
        build_backbone(cfg)


def test_eval_only_turns_off_every_pretrain_key():
    from fastreid_plugins.clip_senet import add_clip_senet_config
    from fastreid_plugins.config import get_cfg
    from fastreid_plugins.engine import _no_pretrain
    cfg = get_cfg(add_clip_senet_config)
    cfg.MODEL.BACKBONE.PRETRAIN = True
    assert cfg.MODEL.CLIPSENET.SEM.PRETRAIN is True
    _no_pretrain(cfg.MODEL)
    assert cfg.MODEL.BACKBONE.PRETRAIN is False and cfg.MODEL.CLIPSENET.SEM.PRETRAIN is False


def test_dataset_cls_hook_builds_both_loaders_over_it(veri_root, datasets_root, tmp_path):
    """``PluginTrainer.dataset_cls``: the train and test loaders run over that class with
    FastReID's transforms/sampler, the same items FastReID's builders give, and the same guards."""
    from fastreid.data.common import CommDataset

    class Tagged(CommDataset):
        def __getitem__(self, index):
            out = super().__getitem__(index)
            out["tag"] = index
            return out

    class TaggedTrainer(PluginTrainer):
        dataset_cls = Tagged

    datasets_root(veri_root)
    cfg = make_cfg(CFG, ["SOLVER.IMS_PER_BATCH", "8", "DATALOADER.NUM_WORKERS", "0",
                         "OUTPUT_DIR", str(tmp_path)])
    ours = TaggedTrainer.build_train_loader(cfg)
    theirs = PluginTrainer.build_train_loader(cfg)
    assert isinstance(ours.dataset, Tagged) and not isinstance(theirs.dataset, Tagged)
    assert ours.dataset.img_items == theirs.dataset.img_items and len(ours.dataset) > 0
    batch = next(iter(ours))
    assert batch["images"].shape[0] == 8 and batch["tag"].shape == (8,)

    t_loader, t_query = TaggedTrainer.build_test_loader(cfg, "VeRi")
    f_loader, f_query = PluginTrainer.build_test_loader(cfg, "VeRi")
    assert isinstance(t_loader.dataset, Tagged) and t_query == f_query > 0
    assert t_loader.dataset.img_items == f_loader.dataset.img_items

    small = make_cfg(CFG, ["SOLVER.IMS_PER_BATCH", "64", "DATALOADER.SAMPLER_TRAIN",
                           "TrainingSampler", "OUTPUT_DIR", str(tmp_path)])
    with pytest.raises(ValueError, match="IMS_PER_BATCH"):
        TaggedTrainer.build_train_loader(small)
