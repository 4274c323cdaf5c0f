"""Reliability (issue 14): no hangs, seeded runs, exact resume, no non-finite or partial
checkpoints.

One test per row of the issue's table (the hang cases run under a timeout, so a regression fails
instead of hanging CI), plus the pieces they rest on. The seeded and the kill-and-resume runs use
the MFG-Net demo config, shrunk for test time: 64x32 input, 2 epochs of 3 iterations.
"""

import argparse
import errno
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import torch
from helpers import ROOT, default_sigint, make_cfg
from torch import nn

import fastreid_plugins  # noqa: F401
from fastreid_plugins import seeding
from fastreid_plugins.checkpoint import (
    NonFiniteCheckpointError,
    PluginCheckpointer,
    TrainingFinishedError,
)
from fastreid_plugins.config import get_cfg
from fastreid_plugins.data.validation import ImageReadError
from fastreid_plugins.engine import PluginTrainer, load_model_weights, main
from fastreid_plugins.errors import CorruptCheckpointError
from fastreid_plugins.mfgnet import add_mfgnet_config

MFG = "configs/demo/mfgnet.yml"
SMALL = ["INPUT.SIZE_TRAIN", "[64,32]", "INPUT.SIZE_TEST", "[64,32]", "SOLVER.MAX_EPOCH", "2",
         "SOLVER.CHECKPOINT_PERIOD", "1", "TEST.EVAL_PERIOD", "100", "SEED", "7",
         # these tests compare optimizer states of final checkpoints: keep them full
         "SOLVER.KEEP_FULL_CHECKPOINTS", "True"]
HANG_TIMEOUT = 300  # s; generous for a loaded CI machine (idle: seconds)
ENV = dict(os.environ, FASTREID_PLUGINS_THREADS="1", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)


def _cfg(out, *opts):
    return make_cfg(MFG, [*SMALL, "OUTPUT_DIR", str(out), *opts], add_fns=(add_mfgnet_config,))


def _args(out, *opts, eval_only=False, resume=False):
    return argparse.Namespace(config_file=os.path.join(ROOT, MFG), eval_only=eval_only,
                              resume=resume, num_gpus=1, num_machines=1, machine_rank=0,
                              dist_url="auto", opts=[*SMALL, "OUTPUT_DIR", str(out), *opts])


def in_thread(fn, timeout=HANG_TIMEOUT):
    """Run ``fn()`` in a daemon thread; return its result or re-raise its exception; fail the test
    if it has not finished after ``timeout`` seconds (a hang)."""
    box = {}

    def target():
        try:
            box["result"] = fn()
        except BaseException as e:  # noqa: B902
            box["error"] = e

    t = threading.Thread(target=target, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive():
        pytest.fail(f"hung: still running after {timeout} s")
    if "error" in box:
        raise box["error"]
    return box.get("result")


def _first_batch(cfg):
    loader = PluginTrainer.build_train_loader(cfg)
    return next(iter(loader))


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def _assert_identical(a, b):
    ma, mb = a["model"], b["model"]
    assert ma.keys() == mb.keys()
    differ = [k for k in ma if not torch.equal(ma[k], mb[k])]
    assert not differ, f"{len(differ)} of {len(ma)} tensors differ, e.g. {differ[:3]}"
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    for i in sa:
        for k in sa[i]:
            assert torch.equal(torch.as_tensor(sa[i][k]), torch.as_tensor(sb[i][k])), (i, k)


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Bit-identity needs one thread count on both sides: the train_net.py processes below run
    with ``ENV``'s one thread, so the in-process runs of this module use one thread too (CI leaves
    ``FASTREID_PLUGINS_THREADS`` unset, and conftest then gives the tests 2 threads)."""
    before = torch.get_num_threads()
    torch.set_num_threads(int(ENV["FASTREID_PLUGINS_THREADS"]))
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def seeded_run(veri_root, tmp_path_factory):
    """The uninterrupted seeded run (in-process): its output folder."""
    import fastreid.data.build as db
    out = tmp_path_factory.mktemp("seeded") / "a"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(db, "_root", veri_root)
        mp.setenv("FASTREID_DATASETS", veri_root)
        trainer = PluginTrainer(_cfg(out))
        trainer.resume_or_load(resume=False)
        trainer.train()
    yield out
    shutil.rmtree(out, ignore_errors=True)  # ~340 MB a checkpoint


# ----------------------------------------------------------------------------------------------
# rows 1, 2: batch settings an identity sampler can never fill
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("ims, expected", [
    ("18", ["SOLVER.IMS_PER_BATCH=18", "DATALOADER.NUM_INSTANCE=4", "16 or 20"]),
    # the real sample has 4 training identities
    ("32", ["32 / 4 = 8 training identities", "has 4", "at most 16"]),
], ids=["not_a_multiple_of_num_instance", "too_few_identities"])
def test_identity_batches_that_can_never_fill_fail_fast(ims, expected, veri_root, datasets_root,
                                                        tmp_path):
    datasets_root(veri_root)
    cfg = _cfg(tmp_path, "SOLVER.IMS_PER_BATCH", ims, "DATALOADER.NUM_INSTANCE", "4")
    with pytest.raises(ValueError) as e:
        in_thread(lambda: _first_batch(cfg))
    for text in expected:
        assert text in str(e.value)


# ----------------------------------------------------------------------------------------------
# row 3: an unreadable image raises in the main thread instead of hanging
# ----------------------------------------------------------------------------------------------
def _sample_with_broken_images(veri_root, dst, split, pid):
    """A symlinked copy of the VeRi sample whose ``split`` images of ``pid`` are broken (the first
    empty, the others truncated)."""
    src = os.path.join(veri_root, "veri")
    os.makedirs(os.path.join(dst, "veri"))
    for name in os.listdir(src):
        if name != split:
            os.symlink(os.path.join(src, name), os.path.join(dst, "veri", name))
    os.makedirs(os.path.join(dst, "veri", split))
    broken = []
    for f in sorted(os.listdir(os.path.join(src, split))):
        s, d = os.path.join(src, split, f), os.path.join(dst, "veri", split, f)
        if f.startswith(pid):
            data = open(s, "rb").read()
            open(d, "wb").write(b"" if not broken else data[:len(data) // 3])
            broken.append(d)
        else:
            os.symlink(s, d)
    return broken


def test_unreadable_training_image_raises_naming_it(veri_root, datasets_root, tmp_path):
    broken = _sample_with_broken_images(veri_root, tmp_path / "data", "image_train", "0546")
    datasets_root(str(tmp_path / "data"))
    cfg = _cfg(tmp_path / "out")
    trainer = PluginTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with pytest.raises(ImageReadError) as e:  # every batch holds all 4 identities
        in_thread(trainer.train)
    assert any(os.path.basename(b) in str(e.value) for b in broken)


def test_loader_thread_passes_its_exception_to_the_consumer():
    from fastreid.data.data_utils import BackgroundGenerator

    def gen():
        yield 1
        raise OSError("image file is truncated: bad.jpg")

    g = BackgroundGenerator(gen(), 0)
    assert in_thread(lambda: next(g), timeout=30) == 1
    for _ in range(2):  # and again: never a wait on the empty queue
        with pytest.raises(OSError, match="bad.jpg"):
            in_thread(lambda: next(g), timeout=30)


@pytest.mark.slow
def test_eval_only_with_unreadable_query_image_raises_naming_it(veri_root, datasets_root,
                                                                seeded_run, tmp_path):
    broken = _sample_with_broken_images(veri_root, tmp_path / "data", "image_query", "0002")
    datasets_root(str(tmp_path / "data"))
    args = _args(tmp_path / "eval", "MODEL.WEIGHTS", str(seeded_run / "model_final.pth"),
                 eval_only=True)
    with pytest.raises(ImageReadError) as e:
        in_thread(lambda: main(args, add_mfgnet_config))
    assert any(os.path.basename(b) in str(e.value) for b in broken)


# ----------------------------------------------------------------------------------------------
# row 4: --resume on a finished run
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_resume_of_a_finished_run_says_so_and_how_to_continue(seeded_run, datasets_root,
                                                             veri_root):
    datasets_root(veri_root)
    trainer = PluginTrainer(_cfg(seeded_run))
    with pytest.raises(TrainingFinishedError) as e:
        trainer.resume_or_load(resume=True)
    msg = str(e.value)
    assert "already finished" in msg and "model_final.pth" in msg
    assert "SOLVER.MAX_EPOCH=2" in msg and "raise SOLVER.MAX_EPOCH" in msg


# ----------------------------------------------------------------------------------------------
# row 5: a truncated checkpoint is named
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_truncated_checkpoint_is_named_for_eval_only_and_resume(seeded_run, datasets_root,
                                                               veri_root, tmp_path):
    datasets_root(veri_root)
    good = seeded_run / "model_0000.pth"
    out = tmp_path / "run"
    out.mkdir()
    bad = out / "model_0000.pth"
    with open(good, "rb") as f:
        bad.write_bytes(f.read(1 << 20))
    (out / "empty.pth").write_bytes(b"")
    model = PluginTrainer.build_model(_cfg(out, "MODEL.HEADS.NUM_CLASSES", "4"))
    for path in (bad, out / "empty.pth"):
        with pytest.raises(CorruptCheckpointError, match=str(path)):
            load_model_weights(model, str(path))
    (out / "last_checkpoint").write_text("model_0000.pth")
    trainer = PluginTrainer(_cfg(out))
    with pytest.raises(CorruptCheckpointError, match="truncated or corrupt") as e:
        trainer.resume_or_load(resume=True)
    assert str(bad) in str(e.value)


# ----------------------------------------------------------------------------------------------
# row 6: non-finite weights are never written, tagged, loaded or evaluated
# ----------------------------------------------------------------------------------------------
def _tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))


def test_non_finite_checkpoint_is_never_written_nor_tagged(tmp_path):
    model = _tiny()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    ck = PluginCheckpointer(model, str(tmp_path), optimizer=opt)
    ck.save("model_0000", epoch=0)
    model[1].running_var[1] = float("inf")  # what BASE_LR 10 does to BatchNorm statistics
    model[0].weight.data[0, 0] = float("nan")
    with pytest.raises(NonFiniteCheckpointError) as e:
        ck.save("model_0001", epoch=1)
    msg = str(e.value)
    assert "1.running_var (1 non-finite)" in msg and "0.weight (1 non-finite)" in msg
    assert "model_0000.pth" in msg and "SOLVER.BASE_LR" in msg
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000.pth"
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000.pth"]


def test_non_finite_checkpoint_is_refused_for_eval_and_resume(tmp_path):
    model = _tiny()
    state = model.state_dict()
    state["0.weight"][0, 0] = float("nan")
    torch.save({"model": state}, tmp_path / "nan.pth")
    with pytest.raises(NonFiniteCheckpointError, match="nan.pth.*0.weight"):
        load_model_weights(_tiny(), str(tmp_path / "nan.pth"))
    (tmp_path / "last_checkpoint").write_text("nan.pth")
    ck = PluginCheckpointer(_tiny(), str(tmp_path))
    with pytest.raises(NonFiniteCheckpointError, match="nan.pth"):
        ck.resume_or_load("", resume=True)


def test_evaluator_refuses_non_finite_features():
    from fastreid_plugins.evaluation import VehicleReidEvaluator

    ev = VehicleReidEvaluator(get_cfg(), num_query=1, output_dir="")
    feats = torch.ones(2, 4)
    feats[1, 2] = float("nan")
    inputs = {"targets": torch.tensor([1, 2]), "camids": torch.tensor([0, 1]),
              "img_paths": ["a.jpg", "b.jpg"]}
    with pytest.raises(FloatingPointError, match=r"1 of 2 images.*b\.jpg"):
        ev.process(inputs, feats)


# ----------------------------------------------------------------------------------------------
# rows 7, 8: seeded runs are bit-identical; kill + --resume reaches the uninterrupted weights
# ----------------------------------------------------------------------------------------------
def test_seed_key_and_clip_senet_alias():
    cfg = get_cfg()
    assert cfg.SEED == -1
    from fastreid_plugins.clip_senet import add_clip_senet_config
    cfg = get_cfg(add_clip_senet_config)
    cfg.MODEL.CLIPSENET.SEED = 3407
    assert seeding.resolve_seed(cfg) == 3407
    cfg.SEED = 3407
    assert seeding.resolve_seed(cfg) == 3407
    cfg.SEED = 1
    with pytest.raises(ValueError, match="SEED=1 and MODEL.CLIPSENET.SEED=3407"):
        seeding.resolve_seed(cfg)
    cfg.MODEL.CLIPSENET.SEED = -1
    assert seeding.resolve_seed(cfg) == 1
    cfg.SEED = -1
    drawn = {seeding.resolve_seed(cfg) for _ in range(3)}
    assert all(s >= 0 for s in drawn) and len(drawn) > 1


def test_svrn_seed_is_an_alias_of_the_shared_key():
    """SVRN's own MODEL.SVRN.SEED (before SEED existed) folds into SEED: no second seeding."""
    from fastreid_plugins.svrn import add_svrn_config
    cfg = get_cfg(add_svrn_config)
    assert cfg.SEED == -1 and cfg.MODEL.SVRN.SEED == -1
    cfg.MODEL.SVRN.SEED = 5
    assert seeding.resolve_seed(cfg) == 5
    cfg.SEED = 2
    with pytest.raises(ValueError, match="SEED=2 and MODEL.SVRN.SEED=5"):
        seeding.resolve_seed(cfg)
    import fastreid_plugins.svrn as svrn
    assert not hasattr(svrn, "SVRNTrainer")  # its own seeding before building is gone
    from tests.ddp_jobs import project
    # train_net.py runs the plain PluginTrainer, seeded by setup
    assert project("SVRN") == (add_svrn_config, PluginTrainer)


def _train_net(out, log, *opts):
    """train_net.py in a child process, SIGINT at its default (:func:`helpers.default_sigint`)."""
    cmd = [sys.executable, os.path.join(ROOT, "projects/MFGNet/train_net.py"), "--config-file",
           os.path.join(ROOT, MFG), *SMALL, "OUTPUT_DIR", str(out), *opts]
    return subprocess.Popen(cmd, env=ENV, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                            preexec_fn=default_sigint)


@pytest.mark.slow
def test_kill_after_epoch_then_resume_matches_the_uninterrupted_seeded_run(
        seeded_run, veri_root, datasets_root, tmp_path):
    """A second seeded run (a separate process, through train_net.py) is killed (SIGKILL) once
    its first epoch's checkpoint is tagged; its checkpoint equals the uninterrupted run's bit for
    bit, and --resume then reaches the uninterrupted run's final weights bit for bit."""
    out, log_path = tmp_path / "b", tmp_path / "train_net.log"
    tag = out / "last_checkpoint"
    deadline = time.time() + HANG_TIMEOUT
    with open(log_path, "w") as log:
        proc = _train_net(out, log)
        try:
            while not (tag.exists() and tag.read_text() == "model_0000.pth"):
                assert proc.poll() is None, ("train_net.py exited early:\n"
                                             + log_path.read_text()[-3000:])
                assert time.time() < deadline, "no checkpoint after the first epoch: hung?"
                time.sleep(0.05)
            proc.send_signal(signal.SIGKILL)
        finally:
            proc.kill()
            proc.wait()
    assert not (out / "model_final.pth").exists(), "the kill came too late to test a resume"
    _assert_identical(_weights(seeded_run / "model_0000.pth"), _weights(out / "model_0000.pth"))

    datasets_root(veri_root)
    in_thread(lambda: main(_args(out, resume=True), add_mfgnet_config))
    final = _weights(out / "model_final.pth")
    _assert_identical(_weights(seeded_run / "model_final.pth"), final)
    assert final["epoch"] == 1
    ts = final["trainer_state"]
    assert ts["sampler"] == {"seed": 7, "position": 6 * 16} and ts["iter"] == 6
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.slow
def test_resume_restores_generator_states_and_sampler_position(seeded_run, datasets_root,
                                                               veri_root, tmp_path, monkeypatch):
    """What a model drawing random numbers in training (dropout, SVRN's random suppression)
    needs: training resumes with the generator states saved at the checkpoint, and the sampler
    at the checkpoint's position."""
    from fastreid.engine.defaults import DefaultTrainer
    datasets_root(veri_root)
    out = tmp_path / "r"
    out.mkdir()
    os.symlink(seeded_run / "model_0000.pth", out / "model_0000.pth")
    (out / "last_checkpoint").write_text("model_0000.pth")
    saved = _weights(out / "model_0000.pth")["trainer_state"]
    seen = {}
    monkeypatch.setattr(DefaultTrainer, "train", lambda self: seen.update(
        rng=seeding.get_rng_state(), start=self.start_epoch))
    trainer = PluginTrainer(_cfg(out, "SEED", "8"))  # the checkpoint's seed 7 wins
    trainer.resume_or_load(resume=True)
    torch.rand(3)  # anything drawn between loading and training does not matter
    trainer.train()
    assert seen["start"] == 1
    for k in ("torch",):
        assert torch.equal(seen["rng"][k], saved["rng"][k])
    assert torch.equal(seen["rng"]["numpy"]["key"], saved["rng"]["numpy"]["key"])
    assert seen["rng"]["python"]["state"].tolist() == saved["rng"]["python"]["state"].tolist()
    sampler = trainer.data_loader.sampler_state
    assert (sampler.seed, sampler.start) == (7, 3 * 16) == (saved["sampler"]["seed"],
                                                          saved["sampler"]["position"])


# ----------------------------------------------------------------------------------------------
# the pieces: sampler position, per-sample seeds, generator states, atomic writes
# ----------------------------------------------------------------------------------------------
def _items(n_ids=6, per_id=5):
    return [(f"{p}_{i}.jpg", p, i % 2) for p in range(n_ids) for i in range(per_id)]


def _fastreid_sampler(seed=None):
    from fastreid.data.samplers import NaiveIdentitySampler
    return NaiveIdentitySampler(_items(), 8, 2, seed=seed)


def test_sampler_resumes_at_any_position_and_ignores_global_draws():
    import itertools
    full = list(itertools.islice(seeding.SeededSampler(_fastreid_sampler(), 5), 100))
    assert [int(i) for i in full] != list(range(100))
    resumed = seeding.SeededSampler(_fastreid_sampler(), 5)
    resumed.load_state_dict({"seed": 5, "position": 37})
    it = iter(resumed)
    got = []
    for _ in range(63):
        np.random.seed(123)  # other code drawing from the global generators in between
        np.random.rand(3)
        got.append(next(it))
    assert got == full[37:]
    assert [d.seed for d in got] == [d.seed for d in full[37:]]
    other = list(itertools.islice(seeding.SeededSampler(_fastreid_sampler(), 6), 100))
    assert [int(i) for i in other] != [int(i) for i in full]


def test_sampler_protocol_load_state_dict_is_used():
    class Proto(torch.utils.data.Sampler):
        def __init__(self):
            self.state = None

        def load_state_dict(self, state):
            self.state = state

        def __iter__(self):
            yield from range(self.state["position"], self.state["position"] + 3)

    inner = Proto()
    s = seeding.SeededSampler(inner, 9)
    s.load_state_dict({"seed": 9, "position": 10})
    assert [int(i) for i in s] == [10, 11, 12]
    assert inner.state == {"seed": seeding.derive_seed(9, 0), "position": 10}


def test_draw_pickles_and_dataset_seeds_each_sample_and_restores_the_caller():
    d = seeding.Draw(3, 1234)
    back = pickle.loads(pickle.dumps(d))
    assert int(back) == 3 and back.seed == 1234

    class Noisy(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return (i, torch.rand(1).item(), float(np.random.rand()))

    ds = seeding.SeededDataset(Noisy())
    torch.manual_seed(0)
    before = torch.get_rng_state()
    a = ds[seeding.Draw(2, 99)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's stream is untouched
    torch.rand(5)
    assert ds[seeding.Draw(2, 99)] == a and ds[seeding.Draw(2, 98)] != a
    assert len(ds) == 5


def test_rng_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    import random
    seeding.seed_all(11)
    state = seeding.get_rng_state()
    want = (random.random(), float(np.random.rand()), torch.rand(1).item())
    torch.save(state, tmp_path / "s.pth")
    seeding.seed_all(12)
    seeding.set_rng_state(torch.load(tmp_path / "s.pth", weights_only=True))
    assert (random.random(), float(np.random.rand()), torch.rand(1).item()) == want


def test_checkpoint_write_is_atomic_on_a_full_disk(tmp_path, monkeypatch):
    model = _tiny()
    ck = PluginCheckpointer(model, str(tmp_path))
    ck.save("model_0000")
    good = (tmp_path / "model_0000.pth").read_bytes()

    def full_disk(obj, f):
        f.write(b"PK\x03\x04" + b"x" * 1000)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError, match="No space left"):
        ck.save("model_0001")
    with pytest.raises(OSError, match="No space left"):
        ck.save("model_0000")  # overwriting an existing name keeps the old content
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000.pth"
    assert (tmp_path / "model_0000.pth").read_bytes() == good
    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000.pth"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_kill_during_checkpoint_write_leaves_the_last_checkpoint_loadable(tmp_path):
    """A forked child writes model_0000, then is SIGKILLed in the middle of writing model_0001."""
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        try:
            torch.manual_seed(0)
            ck = PluginCheckpointer(nn.Linear(64, 64), str(tmp_path))
            ck.save("model_0000")

            def killed_while_writing(obj, f):
                f.write(b"PK\x03\x04" + b"x" * 4096)
                f.flush()
                os.kill(os.getpid(), signal.SIGKILL)

            torch.save = killed_while_writing
            ck.save("model_0001")
        finally:
            os._exit(3)  # not reached when the kill lands
    deadline = time.time() + HANG_TIMEOUT
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.time() > deadline:
            os.kill(pid, signal.SIGKILL)
            pytest.fail("the writing child hung")
        time.sleep(0.02)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    assert (tmp_path / "model_0001.pth.partial").exists()  # the kill hit mid-write
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000.pth"
    assert not (tmp_path / "model_0001.pth").exists()
    ck = PluginCheckpointer(nn.Linear(64, 64), str(tmp_path))
    assert ck.get_all_checkpoint_files() == [str(tmp_path / "model_0000.pth")]
    ck.resume_or_load("", resume=True)


# ----------------------------------------------------------------------------------------------
# row 9: the suite with a FastReID git checkout first on PYTHONPATH
# ----------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_suite_collects_with_a_fastreid_checkout_first_on_pythonpath(tmp_path):
    """FastReID's checkout has a regular ``tests`` package; put one (or the real checkout, if
    ``FASTREID_SRC`` names it) first on PYTHONPATH and collect tests that import ``tests.helpers``
    and ``helpers``."""
    checkout = os.environ.get("FASTREID_SRC")
    if not checkout:
        checkout = str(tmp_path / "fast-reid")
        os.makedirs(os.path.join(checkout, "tests"))
        open(os.path.join(checkout, "tests", "__init__.py"), "w").close()
        open(os.path.join(checkout, "tests", "dataset_test.py"), "w").close()
    env = dict(ENV, PYTHONPATH=os.pathsep.join([checkout, ROOT]))
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "--collect-only", "-p", "no:cacheprovider",
         "tests/test_mfgnet.py", "tests/test_engine.py"],  # tests.helpers / helpers
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=HANG_TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "ERROR" not in proc.stdout and "tests collected" in proc.stdout


def test_seeded_dataset_is_transparent_and_pickles():
    from fastreid.data.common import CommDataset
    inner = CommDataset(_items(), None, relabel=True)
    ds = seeding.SeededDataset(inner)
    assert isinstance(ds, CommDataset) and ds.num_classes == 6 and ds.img_items is inner.img_items
    back = pickle.loads(pickle.dumps(ds))
    assert type(back) is seeding.SeededDataset and back.img_items == inner.img_items


class _NoisyItems(torch.utils.data.Dataset):
    """Items whose "augmentation" draws from torch, NumPy and Python's global generators."""

    def __init__(self, items):
        self.img_items = items

    def __len__(self):
        return len(self.img_items)

    def __getitem__(self, i):
        import random
        noise = torch.rand(2).tolist() + [float(np.random.rand()), random.random()]
        return {"images": torch.tensor([float(i), *noise]), "targets": self.img_items[i][1],
                "camids": 0, "img_paths": self.img_items[i][0]}


def test_seeded_batches_do_not_depend_on_num_workers_or_a_restart():
    from fastreid.data.samplers import NaiveIdentitySampler

    from fastreid_plugins.data.train_loader import seeded_loader

    def batches(num_workers, start=0, n=4):
        loader = seeded_loader(_NoisyItems(_items()), NaiveIdentitySampler(_items(), 8, 2), 3, 8,
                               num_workers)
        loader.sampler_state.load_state_dict({"seed": 3, "position": start * 8})
        it = iter(loader)
        return [next(it)["images"] for _ in range(n)]

    ref = batches(0, n=6)
    assert all(torch.equal(a, b) for a, b in zip(ref, batches(2, n=6)))
    assert all(torch.equal(a, b) for a, b in zip(ref[2:], batches(0, start=2)))
    assert not torch.equal(ref[0][:, 1:], ref[1][:, 1:])


@pytest.mark.slow
def test_ctrl_c_writes_the_last_epoch_then_resume_matches_the_uninterrupted_run(
        seeded_run, veri_root, datasets_root, tmp_path):
    """Issue 27: SIGINT (Ctrl-C) to a real train_net.py run with no periodic checkpoint
    (CHECKPOINT_PERIOD 100) once its first epoch has finished: it writes that epoch's checkpoint,
    ends with one line giving the exact ``--resume`` command (exit 130, no traceback), and the
    resumed run's final weights equal the uninterrupted run's bit for bit."""
    out, log_path = tmp_path / "c", tmp_path / "train_net.log"
    deadline = time.time() + HANG_TIMEOUT
    with open(log_path, "w") as log:
        proc = _train_net(out, log, "SOLVER.CHECKPOINT_PERIOD", "100")
        try:
            # FastReID's metric line of the first epoch: written at its end, before our snapshot
            first = None
            while first is None:
                first = re.search(r"epoch/iter: 0/(\d+)(?:.*? time: ([\d.]+))?",
                                  log_path.read_text())
                assert proc.poll() is None, ("train_net.py exited early:\n"
                                             + log_path.read_text()[-3000:])
                assert time.time() < deadline, "no first epoch: hung?"
                time.sleep(0.05)
            # into the second (last) epoch: a third of the first's length (its iterations x their
            # time), so that the snapshot is taken and the epoch not finished, idle or loaded (a
            # fixed 0.5 s left 0.15 s of an idle run's 0.65 s epoch)
            time.sleep(max(0.1, (int(first.group(1)) + 1) * float(first.group(2) or 0.2) / 3))
            proc.send_signal(signal.SIGINT)
            rc = proc.wait(HANG_TIMEOUT)
        finally:
            proc.kill()
            proc.wait()
    text = log_path.read_text()
    assert rc == 130, text[-3000:]
    assert "Traceback" not in text, text[-3000:]
    lines = [ln for ln in text.splitlines() if "resume with:" in ln]
    assert len(lines) == 1 and lines[0] == text.rstrip().splitlines()[-1], text[-2000:]
    assert "projects/MFGNet/train_net.py --resume --config-file" in lines[0]
    assert str(out / "model_0000.pth") in lines[0]
    assert not (out / "model_final.pth").exists(), "interrupted too late to test a resume"
    assert (out / "last_checkpoint").read_text() == "model_0000.pth"
    assert not list(out.glob("*.partial"))
    _assert_identical(_weights(seeded_run / "model_0000.pth"), _weights(out / "model_0000.pth"))

    datasets_root(veri_root)
    in_thread(lambda: main(_args(out, "SOLVER.CHECKPOINT_PERIOD", "100", resume=True),
                           add_mfgnet_config))
    _assert_identical(_weights(seeded_run / "model_final.pth"), _weights(out / "model_final.pth"))
    shutil.rmtree(out, ignore_errors=True)


@pytest.mark.slow
def test_finished_run_keeps_a_weights_only_final_checkpoint_by_default(
        seeded_run, veri_root, datasets_root, tmp_path):
    """Issue 27: with SOLVER.KEEP_FULL_CHECKPOINTS False (the default) a finished run keeps
    model_final.pth weights-only (the same weights as the full one), removes model_0000.pth, and
    --resume still says the run is finished; --eval-only loads it."""
    from fastreid_plugins.config import PLUGIN_DEFAULTS

    assert PLUGIN_DEFAULTS["SOLVER.KEEP_FULL_CHECKPOINTS"] is False
    out = tmp_path / "w"
    datasets_root(veri_root)
    keep = ("SOLVER.KEEP_FULL_CHECKPOINTS", "False")
    in_thread(lambda: main(_args(out, *keep), add_mfgnet_config))
    assert not (out / "model_0000.pth").exists()
    assert (out / "last_checkpoint").read_text() == "model_final.pth"
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=True)
    assert set(final) == {"model", "epoch", "config", "stripped_from"}
    assert {"optimizer", "lr_sched", "trainer_state"} <= set(final["stripped_from"]["dropped"])
    assert final["epoch"] == 1 and final["config"] == (out / "config.yaml").read_text()
    full = _weights(seeded_run / "model_final.pth")
    assert all(torch.equal(full["model"][k], final["model"][k]) for k in full["model"])
    assert os.path.getsize(out / "model_final.pth") < os.path.getsize(
        seeded_run / "model_final.pth") / 2
    with pytest.raises(TrainingFinishedError, match="weights-only"):
        in_thread(lambda: main(_args(out, *keep, resume=True), add_mfgnet_config))
    res = in_thread(lambda: main(_args(out, *keep, "MODEL.WEIGHTS", str(out / "model_final.pth"),
                                       eval_only=True), add_mfgnet_config))
    assert res["mAP"] >= 0  # evaluated from the weights-only file
