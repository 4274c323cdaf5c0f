"""What the DDP tests run inside each rank (CPU, gloo), and how they start the ranks.

:func:`spawn` starts ``nprocs`` ranks through FastReID's launch worker (the patched
``fastreid.engine.launch._distributed_worker``) like ``launch`` does, but waits with a timeout and
kills the ranks when it expires, so a hang fails the test. A rank's uncaught exception reaches the
parent as ``torch.multiprocessing.ProcessRaisedException`` with the rank's traceback.

:func:`run_jobs` is the ranks' main function: it runs a list of jobs one after the other in the
same process group (start-up, ~5-10 s per process, is the cost), catches each job's exception
(so the parent sees every failure, not only the first) and writes each rank's results to
``<outdir>/rank<r>.json`` after every job.
"""

import copy
import functools
import json
import os
import time
import traceback

import torch
import torch.distributed as dist

#: raised by rank 1 after its last job when asked: proves that worker exceptions reach the parent
SENTINEL = "ddp_jobs: sentinel exception from rank 1"


# --------------------------------------------------------------------------------------------
# starting the ranks
# --------------------------------------------------------------------------------------------
def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(main_func, nprocs, args=(), timeout=120):
    """Run ``main_func(*args)`` in ``nprocs`` gloo ranks on 127.0.0.1; raise on failure or timeout.

    Raises:
        torch.multiprocessing.ProcessRaisedException: a rank raised (its traceback in the message).
        TimeoutError: the ranks did not finish within ``timeout`` seconds (they are killed).
    """
    import sys

    import fastreid_plugins
    fastreid_plugins.activate()  # patches the launch worker
    launch = sys.modules["fastreid.engine.launch"]
    import torch.multiprocessing as mp

    url = f"tcp://127.0.0.1:{free_port()}"
    ctx = mp.start_processes(launch._distributed_worker, nprocs=nprocs, join=False,
                             args=(main_func, nprocs, nprocs, 0, url, args), start_method="spawn")
    deadline = time.monotonic() + timeout
    try:
        while not ctx.join(timeout=max(0.1, deadline - time.monotonic())):
            if time.monotonic() > deadline:
                raise TimeoutError(f"DDP ranks still running after {timeout} s (killed)")
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
                p.join(5)


# --------------------------------------------------------------------------------------------
# helpers inside a rank
# --------------------------------------------------------------------------------------------
def rank():
    return dist.get_rank()


def all_ranks(value):
    """[value of rank 0, value of rank 1, ...] (a float per rank)."""
    t = torch.tensor([float(value)], dtype=torch.float64)
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [float(v) for v in out]


def max_param_diff_to_rank0(module):
    """Largest |p_r - p_0| over every parameter (0.0 when all ranks hold the same parameters)."""
    flat = torch.cat([p.detach().reshape(-1).double() for p in module.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, 0)
    return max(all_ranks((flat - ref).abs().max()))


def _bn_eval(model):
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.eval()
    return model


def synthetic_batch(n_ids, k, hw, seed=0):
    """P x K batch laid out identity after identity, with every key any meta-arch reads."""
    g = torch.Generator().manual_seed(seed)
    n = n_ids * k
    return {"images": torch.rand(n, 3, *hw, generator=g) * 255,
            "targets": torch.arange(n_ids).repeat_interleave(k),
            "camids": torch.arange(n) % 3, "sie_camids": torch.arange(n) % 3,
            "viewids": torch.arange(n) % 4}


def rank_slice(batch, r, w):
    n = batch["images"].shape[0] // w
    return {k: v[r * n:(r + 1) * n] for k, v in batch.items()}


@functools.lru_cache(maxsize=None)
def project(name):
    """(add_fn, trainer_cls) of a project, read from ``projects/<name>/train_net.py`` itself (run
    with ``launch_main`` replaced by a recorder that resolves its arguments as ``launch_main``
    does: a method key through its record), so the tests train what the script trains."""
    import runpy

    from fastreid_plugins import engine

    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "projects", name, "train_net.py")
    seen = {}

    def record(*methods, trainer_cls=None, argv=None):
        seen["add_fns"], seen["trainer_cls"] = engine._resolve_methods(methods, trainer_cls)

    real, engine.launch_main = engine.launch_main, record
    try:
        runpy.run_path(path, run_name="__main__")
    finally:
        engine.launch_main = real
    (add,) = seen["add_fns"]
    return add, seen["trainer_cls"]


def make_cfg(name, config_file, opts):
    from fastreid_plugins.config import get_cfg
    add, trainer_cls = project(name)
    cfg = get_cfg(add)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    cfg.MODEL.DEVICE = "cpu"
    cfg.freeze()
    return cfg, trainer_cls


# --------------------------------------------------------------------------------------------
# jobs
# --------------------------------------------------------------------------------------------
def job_loss_functions(seed=0, **_):
    """Each cross-rank loss on a linear embedding: one DDP step with 2 x B/2 rows == one process
    with B rows (loss value and the gradient of the weight). Also returns, per loss, how far the
    un-gathered loss (each rank's own rows, FastReID's behaviour) is from the whole batch's."""
    from fastreid_plugins import distributed
    from fastreid_plugins.distributed import DistributedDataParallel
    from fastreid_plugins.losses import supcon_loss, triplet_loss
    from fastreid_plugins.svrn.losses import icc_loss, vcc_loss

    r, w = rank(), dist.get_world_size()
    B, T, D_in, D = 16, 3, 12, 8
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(T, B, D_in, generator=g)
    targets = torch.arange(4).repeat_interleave(4)  # 4 identities x 4 images; 2 per rank
    losses = {
        "triplet": lambda z, t, g=True: triplet_loss(z[0], t, 0.3, False, True, gather=g),
        "triplet_cosine_soft": lambda z, t, g=True: triplet_loss(z[0], t, 0.0, True, True,
                                                                 gather=g),
        "supcon": lambda z, t, g=True: supcon_loss(z[0], t, 0.1, gather=g),
        "vcc": lambda z, t, g=True: vcc_loss(z, t, 0.3, gather=g),
        "icc": lambda z, t, g=True: icc_loss(z, 0.15, gather=g),
    }
    out = {}
    for name, fn in losses.items():
        torch.manual_seed(seed)
        lin = torch.nn.Linear(D_in, D)
        ref = copy.deepcopy(lin)
        l_ref = fn(ref(x), targets, False)
        l_ref.backward()
        n = B // w
        xl, tl = x[:, r * n:(r + 1) * n], targets[r * n:(r + 1) * n]
        l_local = fn(lin(xl), tl, False).item()
        ddp = DistributedDataParallel(lin, device_ids=[0], broadcast_buffers=False)
        assert distributed.is_multi_rank()
        l_ddp = fn(ddp(xl), tl)
        l_ddp.backward()
        out[name] = {
            "loss_ref": l_ref.item(), "loss_ddp": all_ranks(l_ddp.item()),
            "loss_local_mean": sum(all_ranks(l_local)) / w,
            "grad_max_diff": max(all_ranks(max(
                (a.grad - b.grad).abs().max().item()
                for a, b in zip(lin.parameters(), ref.parameters())))),
            "grad_max": max(p.grad.abs().max().item() for p in ref.parameters()),
        }
    return out


def job_model_step(name, config_file, opts, hw, n_ids=4, k=2, **_):
    """A meta-arch's losses and gradients: one DDP step, 2 ranks x B/2 images (BN in eval mode)
    == one process with the B images. Returns per-loss values and the largest gradient gap."""
    from fastreid_plugins.distributed import DistributedDataParallel

    r, w = rank(), dist.get_world_size()
    cfg, trainer_cls = make_cfg(name, config_file, opts)
    torch.manual_seed(0)
    model = trainer_cls.build_model(cfg)
    ref = copy.deepcopy(model)
    batch = synthetic_batch(n_ids, k, hw)
    _bn_eval(ref.train())
    ref.gather_losses = False  # the reference: one process over the whole batch
    ref_losses = ref(batch)
    sum(ref_losses.values()).backward()
    _bn_eval(model.train())
    ddp = DistributedDataParallel(model, device_ids=[0], broadcast_buffers=False)
    losses = ddp(rank_slice(batch, r, w))
    sum(losses.values()).backward()
    grad_diff, grad_max, missing = 0.0, 0.0, []
    for (pn, p), q in zip(model.named_parameters(), ref.parameters()):
        if q.grad is None and p.grad is None:
            continue
        if (q.grad is None) != (p.grad is None):
            missing.append(pn)
            continue
        grad_diff = max(grad_diff, (p.grad - q.grad).abs().max().item())
        grad_max = max(grad_max, q.grad.abs().max().item())
    return {"losses": {kk: {"ref": ref_losses[kk].item(),
                            "ddp_mean": sum(all_ranks(losses[kk].item())) / w}
                       for kk in ref_losses},
            "grad_max_diff": max(all_ranks(grad_diff)), "grad_max": grad_max,
            "grad_mismatch": missing}


def job_train(name, config_file, opts, **_):
    """Train a project as ``train_net.py --num-gpus 2`` does (:func:`fastreid_plugins.engine.main`'s
    steps), then check: parameters identical across ranks and changed by training, one checkpoint
    file written (by rank 0 only), BN buffers that differed across ranks before the evaluation's
    broadcast; returns rank 0's printed metrics."""
    from fastreid.engine import default_argument_parser
    from fastreid.utils import comm

    from fastreid_plugins import distributed, engine

    add, trainer_cls = project(name)
    args = default_argument_parser().parse_args(["--config-file", config_file, *opts])
    cfg = engine.setup(args, add)

    saves = []
    real_save = torch.save

    def counting_save(obj, f, *a, **kw):   # checkpoint files only (gloo pickles objects too)
        name = str(getattr(f, "name", f))
        if name.startswith(cfg.OUTPUT_DIR):
            saves.append(name)
        return real_save(obj, f, *a, **kw)

    buffer_gaps = []
    real_broadcast = distributed.broadcast_buffers

    def recording_broadcast(model, src=0):
        module = model.module if hasattr(model, "module") else model
        flat = torch.cat([b.detach().reshape(-1).double() for b in module.buffers()
                          if b.is_floating_point()])
        ref = flat.clone()
        dist.broadcast(ref, src)
        buffer_gaps.append(max(all_ranks((flat - ref).abs().max())))
        return real_broadcast(model, src)

    torch.save, distributed.broadcast_buffers = counting_save, recording_broadcast
    try:
        trainer = trainer_cls(cfg)
        trainer.resume_or_load(resume=False)
        init = copy.deepcopy(trainer.model.module.state_dict())
        results = trainer.train()
    finally:
        torch.save, distributed.broadcast_buffers = real_save, real_broadcast
    module = trainer.model.module
    change = max((p.detach() - init[n]).abs().max().item() for n, p in module.named_parameters())
    return {"results": {k: float(v) for k, v in (results or {}).items()
                        if isinstance(v, (int, float))} if comm.is_main_process() else None,
            "param_gap": max_param_diff_to_rank0(module), "param_change": change,
            "saves": all_ranks(len(saves)), "buffer_gap_before_eval": buffer_gaps,
            "output_dir": cfg.OUTPUT_DIR,
            "sampler": type(_inner_sampler(trainer.data_loader)).__name__}


def _inner_sampler(loader):
    """The identity sampler under :class:`fastreid_plugins.seeding.SeededSampler`'s wrapper."""
    sampler = loader.batch_sampler.sampler
    return getattr(sampler, "sampler", sampler)


def job_ablations(name, config_file, opts, rows, hw, n_ids=4, k=2, steps=2, **_):
    """Each ablation row (``{row: overrides}``): build the model and FastReID's optimizer, wrap it
    in DDP as FastReID's trainer does, and run ``steps`` of FastReID's ``SimpleTrainer`` on a
    P x K batch split over the ranks. Per row: finite losses, parameters identical across ranks
    and changed; a row's exception is recorded and the next row runs."""
    from fastreid.engine import defaults
    from fastreid.engine.train_loop import SimpleTrainer
    from fastreid.utils.events import EventStorage

    r, w = rank(), dist.get_world_size()
    out = {}
    for row, overrides in rows.items():
        try:
            cfg, trainer_cls = make_cfg(name, config_file, list(opts) + list(overrides))
            torch.manual_seed(0)
            model = trainer_cls.build_model(cfg)
            optimizer, param_wrapper = trainer_cls.build_optimizer(cfg, model)
            init = {n: p.detach().clone() for n, p in model.named_parameters()}
            ddp = defaults.DistributedDataParallel(model, device_ids=[0], broadcast_buffers=False)
            data = [rank_slice(synthetic_batch(n_ids, k, hw, seed=s), r, w) for s in range(steps)]
            trainer = SimpleTrainer(ddp, data, optimizer, param_wrapper)
            with EventStorage(0) as storage:   # run_step raises FloatingPointError on NaN/inf
                for it in range(steps):
                    trainer.iter = it
                    trainer.run_step()
                    storage.step()
            change = max((p.detach() - init[n]).abs().max().item()
                         for n, p in model.named_parameters())
            out[row] = {"ok": True, "param_gap": max_param_diff_to_rank0(model),
                        "param_change": change}
        except Exception:
            out[row] = {"ok": False, "error": traceback.format_exc()}
    return out


JOBS = {"loss_functions": job_loss_functions, "model_step": job_model_step, "train": job_train,
        "ablations": job_ablations}


def run_jobs(outdir, jobs, raise_sentinel=False):
    """The ranks' main function: run ``jobs`` (dicts with ``kind``, ``key`` and the job's
    arguments) in order, writing ``<outdir>/rank<r>.json`` ({key: result or {"error": tb}})."""
    import logging

    import fastreid_plugins
    fastreid_plugins.activate()  # a spawned rank starts unpatched, as train_net.py's workers do
    torch.set_num_threads(1)
    logging.getLogger("fastreid").setLevel(logging.WARNING)
    r = rank()
    path = os.path.join(outdir, f"rank{r}.json")
    results = {}
    for job in jobs:
        t0 = time.time()
        try:
            res = JOBS[job["kind"]](**job)
        except Exception:
            res = {"error": traceback.format_exc()}
        res = dict(res) if isinstance(res, dict) else {"value": res}
        res["_seconds"] = round(time.time() - t0, 2)
        results[job["key"]] = res
        with open(path + ".tmp", "w") as f:
            json.dump(results, f, indent=1, default=str)
        os.replace(path + ".tmp", path)
    dist.barrier()
    if raise_sentinel and r == 1:
        raise RuntimeError(SENTINEL)
