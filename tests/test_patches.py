"""Each compat patch: the patched behaviour works, and the unpatched original shows the bug."""

import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from helpers import ROOT, make_cfg, seed_everything

import fastreid_plugins  # noqa: F401  (applies the patches under test)
from fastreid_plugins import checkpoint, patches
from fastreid_plugins.patches import base as compat  # patch_attr, APPLIED, ORIGINALS

CFG = "configs/demo/bagtricks_r18.yml"


def _run(code, env=None):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, env={**os.environ, **(env or {})})


def test_applied_once_and_idempotent():
    before = list(compat.APPLIED)
    patches.apply()
    patches.apply()
    assert before == compat.APPLIED
    for name in ["optimizer.zero_grad", "DataLoaderX.cpu", "AMPTrainer.cpu",
                 "ReidEvaluator.no_compile", "rerank.cpu", "test_loader.num_workers",
                 "Checkpointer.weights_only",
                 "preprocess_image.out_of_place", "pretrain.strict_resolve", "pretrain.offline"]:
        assert name in compat.APPLIED


def test_patch_attr_once_everywhere_the_original_is_bound(monkeypatch):
    import types
    monkeypatch.setattr(compat, "ORIGINALS", {})

    def original(x):
        return x

    def other(x):
        return -x

    owner, reexport, unrelated = (types.ModuleType(n) for n in ("_pa_owner", "_pa_re", "_pa_other"))
    owner.f, reexport.f, unrelated.f = original, original, other
    for mod in (owner, reexport, unrelated):
        monkeypatch.setitem(sys.modules, mod.__name__, mod)
    applied, made = ["earlier"], []

    def make(orig):
        made.append(orig)
        return lambda x: orig(x) + 1

    assert compat.patch_attr(owner, "f", "f", make, modules=["_pa_re", "_pa_other", "_pa_absent"],
                             tag="f.plus_one", applied=applied) is True
    assert owner.f(1) == 2 and reexport.f is owner.f
    assert unrelated.f is other, "a module holding another object under the name is left alone"
    assert {"f": original} == compat.ORIGINALS and made == [original]
    assert applied == ["earlier", "f.plus_one"]
    patched = owner.f
    assert compat.patch_attr(owner, "f", "f", make, modules=["_pa_re"], tag="f.plus_one",
                             applied=applied) is False
    assert owner.f is patched and made == [original] and applied == ["earlier", "f.plus_one"]
    assert {"f": original} == compat.ORIGINALS
    # a loop over several owners records its tag once; tag=None records nothing
    other_owner = types.ModuleType("_pa_owner2")
    other_owner.f = other
    assert compat.patch_attr(other_owner, "f", "f2", make, tag="f.plus_one", applied=applied)
    assert other_owner.f(1) == 0 and applied == ["earlier", "f.plus_one"]
    third = types.ModuleType("_pa_owner3")
    third.f = original
    before = list(compat.APPLIED)
    assert compat.patch_attr(third, "f", "f3", make)
    assert before == compat.APPLIED and applied == ["earlier", "f.plus_one"]


@pytest.mark.slow
def test_fastreid_import_fails_without_shims_and_works_with_them():
    bare = _run("import fastreid.data")
    assert bare.returncode != 0 and ("torch._six" in bare.stderr or "Mapping" in bare.stderr)
    ok = _run("import fastreid_plugins.patches.compat, fastreid.data, fastreid.evaluation.testing;"
              " print('ok')")
    assert ok.returncode == 0, ok.stderr
    import collections

    from torch._six import string_classes
    assert string_classes == (str, bytes) or str in string_classes
    assert collections.Mapping is collections.abc.Mapping


def _tiny_model_and_batch():
    seed_everything(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.BatchNorm1d(16),
                                torch.nn.Linear(16, 3))
    x, y = torch.randn(12, 8), torch.randint(0, 3, (12,))
    return model, x, y


def _one_step(build_optimizer):
    cfg = make_cfg(CFG)
    model, x, y = _tiny_model_and_batch()
    opt, _ = build_optimizer(cfg, model)
    before = [p.detach().clone() for p in model.parameters()]
    for _ in range(2):  # the bug shows from the first zero_grad on
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    return [not torch.equal(b, p.detach()) for b, p in zip(before, model.parameters())]


def test_optimizer_updates_weights_after_one_step():
    from fastreid.solver import build_optimizer
    changed = _one_step(build_optimizer)
    assert all(changed), "every parameter must change after an optimizer step"


def test_unpatched_optimizer_updates_nothing():
    changed = _one_step(compat.ORIGINALS["build_optimizer"])
    assert not any(changed), ("FastReID 1.4.0's optimizer on torch 2.x was expected to "
                              "update nothing")


def test_trainer_optimizer_and_amsgrad():
    from fastreid_plugins.engine import PluginTrainer
    cfg = make_cfg(CFG, ["SOLVER.OPT", "AMSGrad"])
    model, x, y = _tiny_model_and_batch()
    opt, _ = PluginTrainer.build_optimizer(cfg, model)
    assert isinstance(opt, torch.optim.Adam) and all(g["amsgrad"] for g in opt.param_groups)
    before = [p.detach().clone() for p in model.parameters()]
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(x), y).backward()
    opt.step()
    assert all("max_exp_avg_sq" in s for s in opt.state.values())
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="SOLVER.OPT"):
        PluginTrainer.build_optimizer(make_cfg(CFG, ["SOLVER.OPT", "Adamm"]), model)


class _DS(torch.utils.data.Dataset):
    def __len__(self):
        return 6

    def __getitem__(self, i):
        return {"images": torch.full((3, 4, 4), float(i)), "targets": i % 2, "camids": 0}


def test_dataloaderx_on_cpu():
    from fastreid.data.build import fast_batch_collator
    from fastreid.data.data_utils import DataLoaderX
    loader = DataLoaderX(0, dataset=_DS(), batch_size=2, num_workers=0,
                         collate_fn=fast_batch_collator)
    batches = list(loader)
    assert len(batches) == 3 and batches[1]["images"][0, 0, 0, 0].item() == 2.0
    if not torch.cuda.is_available():
        with pytest.raises(Exception):
            compat.ORIGINALS["DataLoaderX.__init__"](object.__new__(DataLoaderX), 0, dataset=_DS())


def test_amp_trainer_falls_back_to_fp32_on_cpu():
    if torch.cuda.is_available():
        pytest.skip("the fallback only applies without CUDA")
    from fastreid.engine.train_loop import AMPTrainer

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(48, 2)

        def forward(self, batch):
            return {"loss_cls": torch.nn.functional.cross_entropy(
                self.fc(batch["images"].flatten(1)), batch["targets"])}

    from fastreid.data.build import fast_batch_collator
    from fastreid.utils.events import EventStorage
    model = M()
    loader = torch.utils.data.DataLoader(_DS(), batch_size=2, collate_fn=fast_batch_collator)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AMPTrainer(model, loader, opt, None)
    w = model.fc.weight.detach().clone()
    AMPTrainer._fastreid_plugins_warned = False
    with EventStorage(0), pytest.warns(RuntimeWarning, match="fp32"):
        trainer.iter = 0
        trainer.run_step()
    assert not torch.equal(w, model.fc.weight)
    with EventStorage(0), pytest.raises(AssertionError, match="CUDA"):
        compat.ORIGINALS["AMPTrainer.run_step"](trainer)


def test_reid_evaluator_never_compiles(monkeypatch):
    import fastreid.evaluation.reid_evaluation as re_
    from fastreid.evaluation import ReidEvaluator
    calls = []
    monkeypatch.setattr(re_, "compile_helper", lambda: calls.append(1))
    ReidEvaluator(make_cfg(CFG), 3)
    assert calls == []
    try:
        from fastreid.evaluation.rank_cylib.rank_cy import evaluate_cy  # noqa: F401
    except ImportError:
        compat.ORIGINALS["ReidEvaluator._compile_dependencies"](object.__new__(ReidEvaluator))
        assert calls == [1], "the unpatched evaluator compiles at run time"


def test_rerank_runs_on_cpu():
    from fastreid.utils.compute_dist import build_dist
    seed_everything(0)
    q, g = torch.randn(5, 16), torch.randn(20, 16)
    d = build_dist(q, g, metric="jaccard", k1=6, k2=3)
    assert d.shape == (5, 20) and np.isfinite(d).all() and (d >= 0).all() and (d <= 1 + 1e-6).all()
    if not torch.cuda.is_available():
        with pytest.raises(Exception):
            compat.ORIGINALS["compute_jaccard_distance"](torch.cat([q, g]), k1=6, k2=3)


def test_test_loader_honours_num_workers(veri_root, datasets_root):
    datasets_root(veri_root)
    from fastreid.data import build_reid_test_loader
    cfg = make_cfg(CFG, ["DATALOADER.NUM_WORKERS", "0"])
    loader, nq = build_reid_test_loader(cfg, dataset_name="VeRi")
    assert loader.num_workers == 0 and nq == 30
    loader, _ = compat.ORIGINALS["build_reid_test_loader"](cfg, dataset_name="VeRi")
    assert loader.num_workers == 4, "FastReID 1.4.0 ignores DATALOADER.NUM_WORKERS for test loaders"


def test_checkpointer_round_trip_and_clear_unpickling_error(tmp_path, monkeypatch):
    from fastreid.solver import lr_scheduler
    from fastreid.utils.checkpoint import Checkpointer
    m = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(m.parameters())
    ck = Checkpointer(m, str(tmp_path), optimizer=opt,
                      lr_sched=lr_scheduler.MultiStepLR(opt, [2, 3]))
    ck.save("model_final", epoch=3)
    m2 = torch.nn.Linear(3, 2)
    opt2 = torch.optim.Adam(m2.parameters())
    extra = Checkpointer(m2, str(tmp_path), optimizer=opt2,
                         lr_sched=lr_scheduler.MultiStepLR(opt2, [9])).resume_or_load(
        "", resume=True)
    assert extra["epoch"] == 3 and torch.equal(m.weight, m2.weight)

    bad = tmp_path / "pickled.pth"
    torch.save({"model": m.state_dict(), "iteration": np.float64(3.0)}, bad)
    with pytest.raises(Exception) as orig:
        compat.ORIGINALS["Checkpointer._load_file"](ck, str(bad))
    assert checkpoint.TRUST_ENV not in str(orig.value)
    with pytest.raises(checkpoint.CheckpointUnpicklingError, match=checkpoint.TRUST_ENV) as err:
        Checkpointer(m2).load(str(bad))
    assert str(bad) in str(err.value)
    monkeypatch.setenv(checkpoint.TRUST_ENV, "1")
    assert Checkpointer(m2).load(str(bad))["iteration"] == 3.0


def test_baseline_preprocess_is_out_of_place_and_flip_test_is_right():
    from fastreid.modeling import build_model
    cfg = make_cfg(CFG)
    seed_everything(0)
    model = build_model(cfg).eval()
    images = torch.rand(2, 3, 64, 64) * 255
    batch = {"images": images.clone()}
    with torch.no_grad():
        model(batch)
    assert torch.equal(batch["images"], images), \
        "the caller's batch must not be normalised in place"
    orig = compat.ORIGINALS["Baseline.preprocess_image"]
    batch = {"images": images.clone()}
    orig(model, batch)
    assert not torch.equal(batch["images"], images), "FastReID 1.4.0 normalises in place"


def test_pretrain_without_path_offline_is_a_clear_error():
    """Empty PRETRAIN_PATH: torch.hub cache, then download; offline (as in tests) a clear error."""
    from fastreid.modeling.backbones import build_backbone
    cfg = make_cfg(CFG, ["MODEL.BACKBONE.PRETRAIN", "True", "MODEL.BACKBONE.PRETRAIN_PATH", ""])
    with pytest.raises(FileNotFoundError, match="PRETRAIN_PATH") as e:
        build_backbone(cfg)
    assert "resnet18-5c106cde.pth" in str(e.value) and "FASTREID_PLUGINS_OFFLINE=1" in str(e.value)


def test_pretrained_backbone_loading_is_strict_where_fastreid_is_not(tmp_path):
    """FastReID's builder loads a file holding only conv1 and trains the rest from random weights
    (one log line); ours refuses it, naming the file and the missing keys."""
    from fastreid.modeling.backbones import build_backbone
    path = tmp_path / "partial.pth"
    torch.save({"conv1.weight": torch.full((64, 3, 7, 7), 0.5)}, path)
    cfg = make_cfg(CFG, ["MODEL.BACKBONE.PRETRAIN", "True",
                         "MODEL.BACKBONE.PRETRAIN_PATH", str(path)])
    original = compat.ORIGINALS["fastreid.modeling.backbones.resnet.build_resnet_backbone"]
    assert torch.all(original(cfg).conv1.weight == 0.5)  # silently half-loaded
    with pytest.raises(ValueError, match="partial.pth") as e:
        build_backbone(cfg)
    assert "layer1.0.conv1.weight" in str(e.value)


def test_every_applied_patch_is_described_with_its_targets():
    """``python -m fastreid_plugins.patches`` can say, for every patch applied here, what it
    patches, why, and whether FastReID's own models change."""
    from fastreid_plugins.patches import APPLIED, PATCHES, report
    assert APPLIED, "no patch applied"
    for tag in APPLIED:
        assert tag in PATCHES, f"patch {tag!r} has no description (patches.base.describe)"
        p = PATCHES[tag]
        assert p.targets, f"patch {tag!r} records no target"
        assert len(p.why) > 40 and isinstance(p.changes_models, bool), tag
    text = report()
    for tag in APPLIED:
        assert tag in text
    # the patches that do change FastReID's models are the ones that change what they compute
    changing = {t for t, p in PATCHES.items() if p.changes_models}
    assert changing == {"optimizer.zero_grad", "pretrain.strict_resolve",
                        "preprocess_image.out_of_place"}


def test_patches_cli_lists_every_patch():
    from fastreid_plugins.patches import APPLIED
    out = subprocess.run([sys.executable, "-m", "fastreid_plugins.patches", "--activate"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for tag in APPLIED:
        assert f"\n{tag}  [" in "\n" + out.stdout, tag
    assert "target: fastreid.solver.build.build_optimizer" in out.stdout
    assert max(len(line) for line in out.stdout.splitlines()) <= 100


def test_stacked_patches_of_one_attribute_apply_once_each(monkeypatch):
    """Two patches (two keys) of one attribute stack; re-applying either is a no-op."""
    import types
    monkeypatch.setattr(compat, "ORIGINALS", {})
    owner = types.ModuleType("_stack_owner")
    owner.f = lambda x: x
    assert compat.patch_attr(owner, "f", "f.a", lambda o: (lambda x: o(x) + 1))
    assert compat.patch_attr(owner, "f", "f.b", lambda o: (lambda x: o(x) * 10))
    assert owner.f(1) == 20
    assert not compat.patch_attr(owner, "f", "f.a", lambda o: (lambda x: o(x) + 1))
    assert not compat.patch_attr(owner, "f", "f.b", lambda o: (lambda x: o(x) * 10))
    assert owner.f(1) == 20 and compat.ORIGINALS["f.b"](1) == 2


@pytest.mark.parametrize("kind", ["text", "zip_without_data_pkl", "python_pickle", "list"])
def test_weights_that_are_no_checkpoint_are_named(tmp_path, kind):
    """``MODEL.WEIGHTS`` pointing at something that is not a checkpoint: torch alone ends in
    ``KeyError: 101`` / ``UnpicklingError`` / an enforce failure; here a CorruptCheckpointError
    names the file and what it holds."""
    import pickle
    import zipfile

    from fastreid_plugins.engine import load_model_weights
    from fastreid_plugins.errors import CorruptCheckpointError, UserError
    path = tmp_path / f"{kind}.pth"
    expected = {"text": r"a text file \(it starts with 'learning rate 0.1'\)",
                "zip_without_data_pkl": r"a zip archive without data.pkl \(holds notes.txt\)",
                "python_pickle": r"a Python pickle \(protocol 4\) not written by torch.save",
                "list": r"holds no model state dict \(it holds a list\)"}[kind]
    if kind == "text":
        path.write_text("learning rate 0.1\nmAP 80\n")
    elif kind == "zip_without_data_pkl":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "x")
    elif kind == "python_pickle":
        path.write_bytes(pickle.dumps({"model": {}}, protocol=4))
    else:
        torch.save([1, 2], path)
    with pytest.raises(CorruptCheckpointError, match=expected) as e:
        load_model_weights(torch.nn.Linear(2, 2), str(path))
    assert str(path) in str(e.value) and isinstance(e.value, UserError)
    # torch's own errors are not this clear: the original loader fails differently
    if kind != "list":
        with pytest.raises(Exception) as raw:
            torch.load(path, weights_only=True)
        assert str(path) not in str(raw.value)


def test_legacy_torch_files_still_load(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save({"w": torch.ones(2)}, path, _use_new_zipfile_serialization=False)
    assert torch.equal(checkpoint.load_checkpoint_file(str(path))["w"], torch.ones(2))
