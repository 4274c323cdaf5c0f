"""Multi-process (DDP) training on CPU with gloo: 2 processes on 127.0.0.1 (issue 13).

Process start-up (torch + FastReID import, ~5-10 s) is the cost, so the checks are batched:

* ``grouped`` (module fixture): ONE 2-rank process group runs every in-rank job of
  ``tests/ddp_jobs.py`` (the cross-rank losses against one process, one DDP step of every
  meta-arch against one process, the training of every meta-arch as ``train_net.py`` runs it,
  every ablation row of every method) and ends with a deliberate exception in rank 1 that must
  reach this process;
* ``projects/MFGNet/train_net.py --num-gpus 2`` from the command line;
* ``projects/SVRN/train_net.py`` as two local "machines" (``--num-machines 2 --machine-rank R``).

Every multi-process run is under a timeout (the ranks are killed when it expires) and a
collective waits at most ``FASTREID_PLUGINS_DIST_TIMEOUT`` seconds for a dead rank.
"""

import json
import os
import signal
import subprocess
import sys

import ddp_jobs
import pytest
import torch

from fastreid_plugins import distributed
from fastreid_plugins.method import method_for_meta_arch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIST_TIMEOUT = "120"      # a collective waiting on a dead rank fails after this many seconds
GROUP_TIMEOUT = 900       # the grouped run (hang detection; minutes on a loaded machine)
CLI_TIMEOUT = 300

# 57 training images, 4 identities: a 24-image global batch of 4 identities x 6 images gives 2
# iterations per epoch (12 images = 2 identities per rank)
DATA = ["DATALOADER.NUM_INSTANCE", "6", "SOLVER.IMS_PER_BATCH", "24", "SOLVER.MAX_EPOCH", "1",
        "DATALOADER.NUM_WORKERS", "0", "TEST.IMS_PER_BATCH", "32",
        "SOLVER.CHECKPOINT_PERIOD", "100", "TEST.EVAL_PERIOD", "100"]


def _tiny(method):
    """(config file, small-model overrides, (H, W)) per method: the unit tests' CPU-sized models,
    at the smallest input every ablation row accepts (6 stripes / 4 parts of 16 px)."""
    if method == "MFGNet":
        from test_mfgnet import DEMO, TINY
        cfg, opts, hw = DEMO, list(TINY), (96, 32)
    elif method == "MBFN":
        from test_mbfn import DEMO, TINY
        cfg, opts, hw = DEMO, list(TINY), (64, 64)
    elif method == "SVRN":
        from test_svrn import DEMO, SMALL
        cfg, opts, hw = DEMO, ["MODEL.HEADS.NUM_CLASSES", "4", *SMALL], (64, 64)
    elif method == "CLIPSENet":
        cfg, opts, hw = ("configs/demo/clip_senet.yml",
                         ["MODEL.HEADS.NUM_CLASSES", "4", "MODEL.BACKBONE.LAST_STRIDE", "2"],
                         (32, 32))
    else:
        raise KeyError(method)
    size = f"[{hw[0]}, {hw[1]}]"
    return cfg, opts + ["INPUT.SIZE_TRAIN", size, "INPUT.SIZE_TEST", size], hw


METHODS = ["MFGNet", "MBFN", "SVRN", "CLIPSENet"]
#: trained from the command line by the tests below (the grouped run trains the others)
CLI_TRAINED = {"MFGNet": "test_train_net_num_gpus_2", "SVRN": "test_two_local_machines"}
GRID_METHODS = [m for m in METHODS if m not in CLI_TRAINED]
def ablation_rows(meta_arch):
    """``{row key: overrides}``: every ablation row of the method whose meta-architecture is
    ``meta_arch`` (its record's rows, :attr:`fastreid_plugins.method.Method.rows`; SVRN's include
    the rows whose ranking layers get no gradient, which DDP refuses at the 2nd iteration unless
    the model leaves those layers out)."""
    rows = {r.key: list(r.overrides) for r in method_for_meta_arch(meta_arch).rows}
    assert rows, f"the {meta_arch} record has no ablation rows"
    return rows


def _distinct_rows(method, rows):
    """Drop rows whose overrides build the same config as an earlier row (e.g. the baseline row
    repeated in several tables); returns ``{row: [str overrides]}``."""
    from fastreid_plugins.config import get_cfg
    add, _ = ddp_jobs.project(method)
    cfg_file, opts, _ = _tiny(method)
    seen, out = set(), {}
    for name, ov in rows.items():
        cfg = get_cfg(add)
        cfg.merge_from_file(os.path.join(ROOT, cfg_file))
        cfg.merge_from_list(opts + list(ov))
        key = cfg.dump()
        if key not in seen:
            seen.add(key)
            out[name] = [str(v) for v in ov]
    return out


def _jobs(outdir):
    jobs = [{"kind": "loss_functions", "key": "loss_functions"}]
    for m in METHODS:
        cfg, opts, hw = _tiny(m)
        cfg = os.path.join(ROOT, cfg)
        step_opts = list(opts)
        if m == "CLIPSENet":   # its paper's losses are CE + SupCon; add the triplet to check it too
            step_opts += ["MODEL.LOSSES.NAME", '("CrossEntropyLoss", "SupConLoss", "TripletLoss")']
        jobs.append({"kind": "model_step", "key": f"step/{m}", "name": m, "config_file": cfg,
                     "opts": step_opts, "hw": hw})
        if m not in CLI_TRAINED:
            jobs.append({"kind": "train", "key": f"train/{m}", "name": m, "config_file": cfg,
                         "opts": opts + DATA + ["OUTPUT_DIR", os.path.join(outdir, m)]})
        # the optimizer is in no ablation: SGD's step is the cheapest over R18's 11M parameters
        jobs.append({"kind": "ablations", "key": f"ablations/{m}", "name": m, "config_file": cfg,
                     "opts": opts + ["SOLVER.OPT", "SGD"],
                     "rows": _distinct_rows(m, ablation_rows(m)),
                     "hw": hw, "n_ids": 2, "k": 2})
    return jobs


@pytest.fixture(scope="module")
def grouped(veri_root, tmp_path_factory):
    """Run every in-rank job in one 2-rank gloo group; returns ({key: rank-0 result},
    {key: rank-1 result}, the exception the parent received)."""
    out = str(tmp_path_factory.mktemp("ddp"))
    mp = pytest.MonkeyPatch()
    mp.setenv("FASTREID_DATASETS", veri_root)
    mp.setenv("FASTREID_PLUGINS_DIST_TIMEOUT", DIST_TIMEOUT)
    mp.setenv("OMP_NUM_THREADS", "1")
    raised = None
    try:
        ddp_jobs.spawn(ddp_jobs.run_jobs, 2, args=(out, _jobs(out), True), timeout=GROUP_TIMEOUT)
    except Exception as e:   # the sentinel (expected) or a real failure
        raised = e
    finally:
        mp.undo()
    res = []
    for r in range(2):
        path = os.path.join(out, f"rank{r}.json")
        res.append(json.load(open(path)) if os.path.isfile(path) else {})
    return res[0], res[1], raised, out


def _result(grouped, key):
    r0, r1, raised, _ = grouped
    if key not in r0 or key not in r1:
        pytest.fail(f"job {key!r} did not finish on both ranks; the parent got: {raised!r}")
    for r in (r0, r1):
        if "error" in r[key]:
            pytest.fail(f"job {key!r} failed:\n{r[key]['error']}")
    return r0[key], r1[key]


# --------------------------------------------------------------------------------------------
# grouped run (slow: the module fixture's 2-rank process group runs every job, minutes)
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_worker_exception_reaches_parent(grouped):
    """Rank 1's exception after the last job reaches the parent with its traceback (no hang)."""
    raised = grouped[2]
    assert isinstance(raised, torch.multiprocessing.ProcessRaisedException), repr(raised)
    assert ddp_jobs.SENTINEL in str(raised)


@pytest.mark.slow
@pytest.mark.parametrize("loss", ["triplet", "triplet_cosine_soft", "supcon", "vcc", "icc"])
def test_cross_rank_loss_equals_single_process(grouped, loss):
    """2 ranks x B/2 rows == 1 process x B rows: the loss on every rank and the DDP-averaged
    gradient; and the per-rank (un-gathered) loss is not the whole batch's (the check can fail)."""
    r0, r1 = _result(grouped, "loss_functions")
    for r in (r0, r1):
        v = r[loss]
        assert v["loss_ddp"] == pytest.approx([v["loss_ref"]] * 2, rel=1e-5, abs=1e-6)
        assert v["grad_max_diff"] <= 1e-5 * max(1.0, v["grad_max"]), v
    v = r0[loss]
    assert abs(v["loss_local_mean"] - v["loss_ref"]) > 1e-3 * abs(v["loss_ref"]), v


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_ddp_step_equals_single_process(grouped, method):
    """One DDP step of the meta-arch (BN in eval mode) == one process with the whole batch: every
    loss (mean over ranks, as FastReID logs it) and every parameter's gradient."""
    r0, _ = _result(grouped, f"step/{method}")
    assert not r0["grad_mismatch"], r0["grad_mismatch"]
    for k, v in r0["losses"].items():
        assert v["ddp_mean"] == pytest.approx(v["ref"], rel=1e-4, abs=1e-5), (k, v)
    assert r0["grad_max_diff"] <= 1e-4 * max(1.0, r0["grad_max"]), r0
    expected = {"SVRN": {"loss_triplet", "loss_vcc", "loss_icc"},
                "CLIPSENet": {"loss_supcon", "loss_triplet"}}.get(method, set())
    assert expected <= set(r0["losses"]), sorted(r0["losses"])


@pytest.mark.slow
@pytest.mark.parametrize("method", GRID_METHODS)
def test_ddp_training_keeps_ranks_identical(grouped, method):
    """2 iterations of the project's training: identical parameters on both ranks, weights
    changed, one checkpoint file written (by rank 0), the global PK sampler in use."""
    r0, r1 = _result(grouped, f"train/{method}")
    assert r0["param_gap"] == 0.0 and r0["param_change"] > 0, r0
    # rank 0 only: model_final.pth, then its weights-only rewrite at the end of training
    # (SOLVER.KEEP_FULL_CHECKPOINTS False, the default); rank 1 writes nothing
    assert r0["saves"] == [2.0, 0.0], r0["saves"]
    assert r0["sampler"] == r1["sampler"] == "GlobalIdentitySampler"
    assert r0["results"] and r1["results"] is None


@pytest.mark.slow
@pytest.mark.parametrize("method", GRID_METHODS)
def test_ddp_printed_metrics_equal_eval_only(grouped, method, veri_root, datasets_root, tmp_path):
    """The metrics DDP training prints (rank 0's return value) == ``--eval-only`` of the saved
    checkpoint in one process; before the evaluation's buffer broadcast, the ranks' BN running
    statistics differed (so without it, rank 1 would embed its shard with other statistics)."""
    r0, _ = _result(grouped, f"train/{method}")
    assert r0["buffer_gap_before_eval"] and r0["buffer_gap_before_eval"][0] > 0
    datasets_root(veri_root)
    cfg, opts, _ = _tiny(method)
    weights = os.path.join(r0["output_dir"], "model_final.pth")
    evald = _eval_only(method, cfg,
                       opts + DATA + ["MODEL.WEIGHTS", weights, "OUTPUT_DIR", str(tmp_path)])
    assert set(r0["results"]) <= set(evald)
    for k, v in r0["results"].items():
        assert v == pytest.approx(evald[k], abs=1e-3), (k, r0["results"], evald)


def _eval_only(method, config_file, opts):
    from fastreid.engine import default_argument_parser

    from fastreid_plugins import engine
    add, trainer_cls = ddp_jobs.project(method)
    args = default_argument_parser().parse_args(
        ["--config-file", os.path.join(ROOT, config_file), "--eval-only", *opts])
    res = engine.main(args, add, trainer_cls=trainer_cls)
    return {k: float(v) for k, v in res.items() if isinstance(v, (int, float))}


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_every_ablation_trains_under_ddp(grouped, method):
    """Every documented ablation row: 2 DDP iterations, parameters identical across ranks and
    changed (one process group per method's rows; see :func:`ablation_rows`)."""
    r0, r1 = _result(grouped, f"ablations/{method}")
    rows = [row for row in r0 if row != "_seconds"]
    assert rows and set(rows) == set(r1) - {"_seconds"}
    failed = {}
    for row in rows:
        a, b = r0[row], r1[row]
        if not (a["ok"] and b["ok"]):
            failed[row] = a.get("error") or b.get("error")
        elif not (a["param_gap"] == 0.0 and a["param_change"] > 0):
            failed[row] = f"param_gap {a['param_gap']} param_change {a['param_change']}"
    assert not failed, "\n\n".join(f"{k}:\n{v}" for k, v in failed.items())


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def _run(cmds, env, timeout):
    """Start every command (own process group), wait for all; kill them all on timeout."""
    procs = [subprocess.Popen(c, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
             for c in cmds]
    outs = []
    try:
        for p in procs:
            outs.append(p.communicate(timeout=timeout)[0])
    except subprocess.TimeoutExpired:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        pytest.fail(f"DDP command(s) still running after {timeout} s (killed): {cmds}")
    return [(p.returncode, o) for p, o in zip(procs, outs)]


def _env(veri_root):
    env = dict(os.environ, FASTREID_DATASETS=veri_root, OMP_NUM_THREADS="1",
               FASTREID_PLUGINS_DIST_TIMEOUT=DIST_TIMEOUT, PYTHONPATH=ROOT)
    return env


@pytest.mark.slow
def test_train_net_num_gpus_2(veri_root, datasets_root, tmp_path):
    """``train_net.py --num-gpus 2`` on a host without CUDA: 2 gloo processes train MFG-Net, one
    checkpoint is written once, and the printed metrics equal ``--eval-only`` of it."""
    cfg, opts, _ = _tiny("MFGNet")
    out = tmp_path / "run"
    cmd = [sys.executable, "projects/MFGNet/train_net.py", "--config-file", cfg, "--num-gpus", "2",
           "--dist-url", f"tcp://127.0.0.1:{ddp_jobs.free_port()}", *opts, *DATA,
           "OUTPUT_DIR", str(out)]
    (rc, log), = _run([cmd], _env(veri_root), CLI_TIMEOUT)
    assert rc == 0, log[-4000:]
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_final.pth"]
    logs = "".join(p.read_text() for p in out.glob("log.txt*"))
    assert logs.count("Saving checkpoint to") == 1, logs[-2000:]
    assert "Rank of current process: 1. World size: 2" in logs
    _check_printed_equals_eval_only("MFGNet", out, tmp_path, veri_root, datasets_root)


def _check_printed_equals_eval_only(method, out, tmp_path, veri_root, datasets_root):
    """The metrics the DDP run wrote (``VeRi_results.json``, what it printed) == ``--eval-only``
    of its ``model_final.pth`` in this process."""
    cfg, opts, _ = _tiny(method)
    printed = json.load(open(out / "VeRi_results.json"))
    datasets_root(veri_root)
    evald = _eval_only(method, cfg, opts + DATA + ["MODEL.WEIGHTS", str(out / "model_final.pth"),
                                                   "OUTPUT_DIR", str(tmp_path / "eval")])
    for k in ("Rank-1", "Rank-5", "mAP", "mINP"):
        assert printed[k] == pytest.approx(evald[k], abs=1e-3), (printed, evald)


@pytest.mark.slow
def test_two_local_machines(veri_root, datasets_root, tmp_path):
    """``--num-machines 2 --machine-rank R --dist-url tcp://127.0.0.1:PORT``: two local
    "machines" of one process each train SVRN together; the checkpoint is written once and the
    printed metrics equal ``--eval-only`` of it."""
    cfg, opts, _ = _tiny("SVRN")
    out = tmp_path / "run"
    url = f"tcp://127.0.0.1:{ddp_jobs.free_port()}"
    cmds = [[sys.executable, "projects/SVRN/train_net.py", "--config-file", cfg, "--num-gpus", "1",
             "--num-machines", "2", "--machine-rank", str(r), "--dist-url", url, *opts, *DATA,
             "OUTPUT_DIR", str(out)] for r in (0, 1)]
    res = _run(cmds, _env(veri_root), CLI_TIMEOUT)
    for rc, log in res:
        assert rc == 0, log[-4000:]
    assert sorted(p.name for p in out.glob("*.pth")) == ["model_final.pth"]
    logs = "".join(p.read_text() for p in out.glob("log.txt*"))
    assert logs.count("Saving checkpoint to") == 1
    assert "Rank of current process: 1. World size: 2" in logs
    _check_printed_equals_eval_only("SVRN", out, tmp_path, veri_root, datasets_root)


@pytest.mark.slow
def test_ctrl_c_under_ddp_saves_once_and_resumes_bit_identically(veri_root, tmp_path):
    """Ctrl-C (SIGINT to the process group, as a terminal sends it) in a ``--num-gpus 2`` run: it
    exits 130 within the timeout, rank 0 writes the last finished epoch's checkpoint once, the
    launcher prints where it stopped and the ``--resume`` command (from the workers), and running
    that command ends with the weights of an uninterrupted run of the same seed."""
    import shlex
    import time

    from helpers import default_sigint

    cfg, opts, _ = _tiny("MFGNet")
    run = [*opts, *DATA, "SOLVER.MAX_EPOCH", "12", "SEED", "3"]

    def cmd(out):
        return [sys.executable, "projects/MFGNet/train_net.py", "--config-file", cfg, "--num-gpus",
                "2", "--dist-url", f"tcp://127.0.0.1:{ddp_jobs.free_port()}", *run,
                "OUTPUT_DIR", str(out)]

    env = _env(veri_root)
    (rc, log), = _run([cmd(tmp_path / "full")], env, CLI_TIMEOUT)
    assert rc == 0, log[-3000:]
    out = tmp_path / "int"
    p = subprocess.Popen(cmd(out), cwd=ROOT, env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT, text=True, start_new_session=True,
                         preexec_fn=default_sigint)
    try:
        deadline, log_txt = time.monotonic() + CLI_TIMEOUT, out / "log.txt"
        while not log_txt.exists() or "epoch/iter: 6/" not in log_txt.read_text():
            assert p.poll() is None and time.monotonic() < deadline, "no 7th epoch seen"
            time.sleep(0.3)
        os.killpg(p.pid, signal.SIGINT)
        log = p.communicate(timeout=120)[0]
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
    assert p.returncode == 130, log[-3000:]
    line = [ln for ln in log.splitlines() if "; resume with: " in ln]
    assert len(line) == 1 and line[0].startswith("Interrupted during epoch "), log[-3000:]
    saved = sorted(f.name for f in out.glob("model_*.pth"))
    assert len(saved) == 1 and saved[0] in line[0], (saved, line)
    resume = shlex.split(line[0].split("; resume with: ", 1)[1])
    assert "--resume" in resume
    i = resume.index("--dist-url")  # the port of the interrupted run may still be in TIME_WAIT
    resume[i + 1] = f"tcp://127.0.0.1:{ddp_jobs.free_port()}"
    exe = resume.index(next(a for a in resume if a.endswith("python") or "python3" in a))
    (rc, log), = _run([[sys.executable, *resume[exe + 1:]]], env, CLI_TIMEOUT)
    assert rc == 0, log[-3000:]
    a = torch.load(tmp_path / "full" / "model_final.pth", map_location="cpu")["model"]
    b = torch.load(out / "model_final.pth", map_location="cpu")["model"]
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------------------
# in-process units
# --------------------------------------------------------------------------------------------
ITEMS = [(f"img{i}.jpg", f"veri_{pid}", 0)
         for pid, n in enumerate([3, 5, 8, 2, 6, 4]) for i in range(n)]


def test_global_sampler_splits_one_global_batch_across_ranks():
    """W processes see exactly the global batches of one process, each rank a contiguous slice of
    whole identities; P distinct identities x K images per step; resumable at any step."""
    one = distributed.GlobalIdentitySampler(ITEMS, 8, 2, seed=3, rank=0, world_size=1)
    pid = {i: it[1] for i, it in enumerate(ITEMS)}
    it1 = iter(one)
    glob = [[next(it1) for _ in range(8)] for _ in range(5)]
    for b in glob:
        ids = [pid[i] for i in b]
        assert len(set(ids)) == 4 and all(ids.count(p) == 2 for p in set(ids))
        assert ids == sorted(ids, key=ids.index)   # identity after identity
    assert len({tuple(b) for b in glob}) > 1       # the draw changes from step to step
    for w in (2, 4):
        its = [iter(distributed.GlobalIdentitySampler(ITEMS, 8, 2, seed=3, rank=r, world_size=w))
               for r in range(w)]
        for b in glob:
            parts = [[next(i) for _ in range(8 // w)] for i in its]
            assert sum(parts, []) == b
            assert not set(pid[i] for i in parts[0]) & set(pid[i] for i in parts[-1])
    resumed = iter(distributed.GlobalIdentitySampler(ITEMS, 8, 2, seed=3, start_iter=3, rank=0,
                                                     world_size=1))
    assert [next(resumed) for _ in range(16)] == glob[3] + glob[4]
    other = iter(distributed.GlobalIdentitySampler(ITEMS, 8, 2, seed=4, rank=0, world_size=1))
    assert [next(other) for _ in range(40)] != sum(glob, [])


def test_global_sampler_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match=r"IMS_PER_BATCH=12 must be a multiple of "
                                         r".*NUM_INSTANCE=4 x world size 2"):
        distributed.GlobalIdentitySampler(ITEMS, 12, 4, seed=0, rank=0, world_size=2)
    with pytest.raises(ValueError, match="8 identities per batch, but the training set has only 6"):
        distributed.GlobalIdentitySampler(ITEMS, 16, 2, seed=0, rank=0, world_size=1)


def test_patches_and_single_process_noops():
    """FastReID's launch worker and DDP class are ours; without a process group the gather and
    the buffer broadcast do nothing."""
    import fastreid.engine.defaults as defaults
    launch = sys.modules["fastreid.engine.launch"]
    from fastreid_plugins import patches
    assert launch._distributed_worker is distributed.distributed_worker
    assert defaults.DistributedDataParallel is distributed.DistributedDataParallel
    assert {"launch.gloo", "DDP.cpu"} <= set(patches.APPLIED)
    # the global sampler is the plugins' train loader's choice, not a patch of FastReID's
    assert "train_loader.global_sampler" not in patches.PATCHES
    x, t = torch.randn(4, 3, requires_grad=True), torch.arange(4)
    assert distributed.gather_for_loss(x, t) == (x, t) and not distributed.is_multi_rank()
    distributed.broadcast_buffers(torch.nn.BatchNorm1d(3))


def test_worker_keeps_fastreid_nccl_path_with_cuda(monkeypatch):
    """With CUDA, FastReID's own worker (NCCL, one GPU per process) stays: the launch patch
    installs the gloo worker only on hosts without CUDA, and the gloo worker refuses to run
    where CUDA is."""
    import copy
    import types

    from fastreid_plugins import upstream
    from fastreid_plugins.patches import base
    from fastreid_plugins.patches import launch as launch_patch

    fastreid_worker = object()
    fake = types.SimpleNamespace(_distributed_worker=fastreid_worker)
    monkeypatch.setattr(upstream, "replace_launch_worker",
                        lambda patch: patch(fake, "_distributed_worker"))
    monkeypatch.setattr(base, "ORIGINALS", dict(base.ORIGINALS))  # the real records stay
    monkeypatch.setitem(base.PATCHES, "launch.gloo", copy.deepcopy(base.PATCHES["launch.gloo"]))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    launch_patch.apply()
    assert fake._distributed_worker is fastreid_worker
    with pytest.raises(RuntimeError, match="FastReID's own"):
        distributed.distributed_worker(0, print, 2, 2, 0, "tcp://127.0.0.1:1", ())
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    launch_patch.apply()  # the same call on a host without CUDA installs the gloo worker
    assert fake._distributed_worker is distributed.distributed_worker


def test_metric_printer_survives_two_writes_at_one_iteration():
    """A 2-iteration run writes metrics after its last step and again after the epoch, before the
    iteration timer has any ``time`` history: FastReID divides by zero there, the patch not."""
    from fastreid.utils.events import CommonMetricPrinter, EventStorage

    from fastreid_plugins import patches

    def two_writes(write):
        printer = CommonMetricPrinter(max_iter=2)
        with EventStorage(1) as storage:
            storage.epoch = 0
            storage.put_scalar("lr", 0.1)
            write(printer)
            write(printer)
    two_writes(CommonMetricPrinter.write)
    with pytest.raises(ZeroDivisionError):
        two_writes(patches.ORIGINALS["CommonMetricPrinter.write"])


def test_sampler_by_name_in_one_process(veri_root, datasets_root):
    """``DATALOADER.SAMPLER_TRAIN GlobalIdentitySampler`` works in one process (its global batches
    are then the ones N processes split); ``NaiveIdentitySampler`` stays FastReID's there."""
    from fastreid.data.samplers import NaiveIdentitySampler
    from helpers import make_cfg

    from fastreid_plugins.engine import PluginTrainer
    from fastreid_plugins.mfgnet import add_mfgnet_config

    datasets_root(veri_root)
    cfg = make_cfg("configs/demo/mfgnet.yml", ["DATALOADER.SAMPLER_TRAIN", "GlobalIdentitySampler",
                                                "SEED", "5"], [add_mfgnet_config])
    loader = PluginTrainer.build_train_loader(cfg)
    sampler = ddp_jobs._inner_sampler(loader)
    assert isinstance(sampler, distributed.GlobalIdentitySampler) and sampler.world_size == 1
    batches = iter(loader.batch_sampler)
    first = [next(batches) for _ in range(3)]
    assert first == [sampler.global_batch(s).tolist() for s in range(3)]
    # --resume: the seeding wrapper's position protocol restarts mid-stream at the same indices
    wrapper = loader.batch_sampler.sampler
    wrapper.load_state_dict(wrapper.state_dict(position=20))
    assert [next(iter(loader.batch_sampler)) for _ in range(1)][0] == sum(first, [])[20:36]
    cfg = make_cfg("configs/demo/mfgnet.yml", [], [add_mfgnet_config])
    sampler = ddp_jobs._inner_sampler(PluginTrainer.build_train_loader(cfg))
    assert isinstance(sampler, NaiveIdentitySampler)


def test_global_sampler_load_state_dict_positions():
    """The seeding module's protocol: ``{"seed", "position"}`` (indices drawn on this rank)."""
    ref = distributed.GlobalIdentitySampler(ITEMS, 8, 2, seed=9, rank=1, world_size=2)
    it = iter(ref)
    stream = [next(it) for _ in range(20)]
    s = distributed.GlobalIdentitySampler(ITEMS, 8, 2, seed=0, rank=1, world_size=2)
    for pos in (0, 3, 4, 9):
        s.load_state_dict({"seed": 9, "position": pos})
        it = iter(s)
        assert [next(it) for _ in range(20 - pos)] == stream[pos:]
