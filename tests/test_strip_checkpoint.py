"""tools.strip_checkpoint: a weights-only copy that loads strictly and gives the same features."""

import os

import pytest
import torch
from helpers import ROOT

import fastreid_plugins  # noqa: F401
from fastreid_plugins.engine import PluginTrainer, load_model_weights
from fastreid_plugins.tools import build_tool_cfg, load_tool_model
from fastreid_plugins.tools.strip_checkpoint import TRAINING_KEYS, main, strip_checkpoint

CFG = os.path.join(ROOT, "configs", "demo", "bagtricks_r18.yml")
OPTS = ["MODEL.HEADS.NUM_CLASSES", "4"]


@pytest.fixture(scope="module")
def full_checkpoint(tmp_path_factory):
    """A training-style checkpoint: model + Adam state after one step + scheduler + iteration,
    and the run's config.yaml beside it (as FastReID's default_setup writes it)."""
    run = tmp_path_factory.mktemp("run")
    cfg = build_tool_cfg(CFG, OPTS)
    torch.manual_seed(0)
    model = PluginTrainer.build_model(cfg)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)
    model.train()
    x = torch.randn(4, 3, *cfg.INPUT.SIZE_TRAIN)
    feats = model.backbone(x)
    feats.mean().backward()
    opt.step()
    sched = torch.optim.lr_scheduler.StepLR(opt, 10)
    path = str(run / "model_final.pth")
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(), "iteration": 23}, path)
    (run / "config.yaml").write_text(cfg.dump())
    return path, cfg


def _features(model, cfg):
    torch.manual_seed(1)
    images = torch.rand(3, 3, *cfg.INPUT.SIZE_TEST) * 255
    with torch.no_grad():
        return model.eval()({"images": images})


def test_stripped_file_has_weights_and_config_only(full_checkpoint, tmp_path):
    src, cfg = full_checkpoint
    dst = str(tmp_path / "weights.pth")
    info = strip_checkpoint(src, dst)
    out = torch.load(dst, map_location="cpu", weights_only=True)
    assert set(out) == {"model", "config", "stripped_from"}
    assert not set(out) & set(TRAINING_KEYS)
    assert sorted(info["dropped"]) == ["iteration", "optimizer", "scheduler"]
    assert out["config"] == cfg.dump()  # the run's config.yaml text, to rebuild the model
    assert info["out_bytes"] < info["in_bytes"]
    assert not os.path.exists(dst + ".partial")  # written through a temporary file


def test_stripped_file_loads_strictly_with_the_same_features(full_checkpoint, tmp_path):
    src, cfg = full_checkpoint
    dst = str(tmp_path / "weights.pth")
    main([src, dst])
    original = PluginTrainer.build_model(cfg)
    load_model_weights(original, src)
    stripped = PluginTrainer.build_model(cfg)
    load_model_weights(stripped, dst)  # strict: any missing / unexpected key raises
    for (k, a), b in zip(original.state_dict().items(), stripped.state_dict().values()):
        assert torch.equal(a, b), k
    assert torch.equal(_features(original, cfg), _features(stripped, cfg))
    # the tools load it too (MODEL.WEIGHTS OUT)
    tool_cfg = build_tool_cfg(CFG, OPTS + ["MODEL.WEIGHTS", dst])
    assert torch.equal(_features(load_tool_model(tool_cfg, "test"), cfg),
                       _features(original, cfg))


def test_strip_refuses_overwriting_its_input_and_bare_tensors(full_checkpoint, tmp_path):
    from fastreid_plugins.errors import ConfigError, WeightsMismatchError

    src, _ = full_checkpoint
    with pytest.raises(ConfigError, match="OUT is IN"):
        strip_checkpoint(src, src)
    bare = str(tmp_path / "tensor.pth")
    torch.save(torch.zeros(3), bare)
    with pytest.raises(WeightsMismatchError, match="tensor.pth"):
        strip_checkpoint(bare, str(tmp_path / "o.pth"))
    assert not os.path.exists(tmp_path / "o.pth")


def test_training_keys_are_the_checkpoint_modules():
    """strip_checkpoint keeps its own (torch-free) copy of the resume-only keys."""
    from fastreid_plugins import checkpoint

    assert TRAINING_KEYS == checkpoint.TRAINING_KEYS
