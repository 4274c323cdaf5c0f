"""Multi-process (DDP) training that computes what one process computes, also on CPU with gloo.

FastReID 1.4.0 starts DDP through ``fastreid.engine.launch`` (``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``), but

* its worker asserts CUDA and hard-codes the NCCL backend, and ``DefaultTrainer`` wraps the model
  in ``DistributedDataParallel(device_ids=[local_rank])``, which torch refuses for CPU modules;
* the model is wrapped with ``broadcast_buffers=False``: every rank keeps its own BatchNorm running
  statistics, so evaluation inside training embeds rank r's shard of the test set with rank r's
  statistics while the checkpoint holds rank 0's (the printed metrics are not the checkpoint's);
* pair-based losses (batch-hard triplet, SupCon, SVRN's VCC/ICC) see only the rank's
  ``IMS_PER_BATCH / world_size`` images (FastReID's triplet gather is commented out), and the
  identity sampler can repeat an identity across the ranks of one step.

This module fixes each point from our side (FastReID's files are never edited):

* :func:`apply` patches FastReID's launch worker (:func:`_distributed_worker`: gloo on hosts without
  CUDA, FastReID's NCCL path unchanged with CUDA) and its DDP class (:class:`DistributedDataParallel`:
  no ``device_ids`` for CPU modules), and makes the train loader use :class:`GlobalIdentitySampler`
  under DDP;
* :func:`gather_for_loss` / :func:`all_gather_with_grad`: a gradient-carrying all-gather used by
  the cross-rank losses (:func:`fastreid_plugins.losses.triplet_loss`,
  :func:`~fastreid_plugins.losses.supcon_loss`, SVRN's :func:`~fastreid_plugins.svrn.losses.vcc_loss`
  and :func:`~fastreid_plugins.svrn.losses.icc_loss`), so N processes x B/N images optimise the loss of
  one process x B images (same value on every rank, same gradient after DDP's averaging);
* :func:`broadcast_buffers`: rank 0's buffers to every rank, called by
  :meth:`fastreid_plugins.engine.PluginTrainer.test` before evaluating.

Config (added by :func:`fastreid_plugins.config.add_plugins_config`):

* ``DIST.GATHER_LOSSES`` (True): the pair-based losses gather embeddings and labels from all ranks;
  False computes them over each rank's own images (FastReID's behaviour);
* ``DIST.GLOBAL_SAMPLER`` (True): under DDP, ``NaiveIdentitySampler`` is replaced by
  :class:`GlobalIdentitySampler` (one P x K global batch per step, split across ranks);
  ``DATALOADER.SAMPLER_TRAIN: GlobalIdentitySampler`` asks for it at any world size.

The environment variable ``FASTREID_PLUGINS_DIST_TIMEOUT`` (seconds, default 1800) bounds how long a
gloo collective waits for a rank that died, so the others fail instead of hanging.
"""

import datetime
import logging
import os
from contextlib import contextmanager

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as _TorchDDP
from torch.utils.data import Sampler

from fastreid.utils import comm

__all__ = ["apply", "configure", "gather_enabled", "gathering", "all_gather_with_grad",
           "gather_for_loss", "broadcast_buffers", "DistributedDataParallel",
           "GlobalIdentitySampler", "add_dist_config"]

logger = logging.getLogger(__name__)

#: process-wide switch of the cross-rank losses (``DIST.GATHER_LOSSES``), set by :func:`configure`
_GATHER = True


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------
def add_dist_config(cfg):
    """Add ``DIST.{GATHER_LOSSES, GLOBAL_SAMPLER}`` to ``cfg`` in place (idempotent)."""
    from fastreid.config import CfgNode as CN

    if "DIST" not in cfg:
        cfg.DIST = CN()
        cfg.DIST.GATHER_LOSSES = True
        cfg.DIST.GLOBAL_SAMPLER = True
    return cfg


def configure(cfg):
    """Set the process-wide cross-rank loss switch from ``cfg.DIST.GATHER_LOSSES`` (no-op for a
    config without the ``DIST`` node)."""
    global _GATHER
    if "DIST" in cfg:
        _GATHER = bool(cfg.DIST.GATHER_LOSSES)


def gather_enabled():
    """True when the cross-rank losses gather (``DIST.GATHER_LOSSES``) and a process group of more
    than one rank is running."""
    return _GATHER and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


@contextmanager
def gathering(enabled):
    """Temporarily turn the cross-rank gathering on or off (``with gathering(False): ...``)."""
    global _GATHER
    old, _GATHER = _GATHER, bool(enabled)
    try:
        yield
    finally:
        _GATHER = old


# --------------------------------------------------------------------------------------------
# gradient-carrying all-gather
# --------------------------------------------------------------------------------------------
class _AllGather(torch.autograd.Function):
    """``all_gather`` whose backward all-reduces (sums) the gradient and returns this rank's slice.

    Every rank computes the same loss L over the gathered batch; this rank's slice x_r then receives
    sum_s dL_s/dx_r = W dL/dx_r, and DDP's gradient averaging divides by W: the parameters get
    dL/dtheta, the gradient of one process over the whole batch. Unlike
    ``torch.distributed.nn.functional.all_gather`` (reduce-scatter on NCCL, all-to-all elsewhere,
    equal sizes only), ranks may hold different sizes and the backward is one all-reduce of the
    full gradient, which every backend has (the tensors here are a batch of embeddings).
    """

    @staticmethod
    def forward(ctx, x, dim, sizes):
        ctx.dim, ctx.sizes, ctx.rank = dim, sizes, dist.get_rank()
        parts = []
        for n in sizes:
            shape = list(x.shape)
            shape[dim] = n
            parts.append(torch.empty(shape, dtype=x.dtype, device=x.device))
        if len(set(sizes)) == 1:
            dist.all_gather(parts, x.contiguous())
        else:  # gloo's all_gather needs equal sizes: pad to the largest
            big = max(sizes)
            pad = list(x.shape)
            pad[dim] = big - x.shape[dim]
            xp = torch.cat([x, x.new_zeros(pad)], dim=dim).contiguous()
            full = [torch.empty_like(xp) for _ in sizes]
            dist.all_gather(full, xp)
            parts = [f.narrow(dim, 0, n) for f, n in zip(full, sizes)]
        return torch.cat(parts, dim=dim)

    @staticmethod
    def backward(ctx, grad):
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.sizes[:ctx.rank])
        return grad.narrow(ctx.dim, start, ctx.sizes[ctx.rank]), None, None


def _sizes(n, device):
    t = torch.tensor([n], dtype=torch.long, device=device)
    out = [torch.zeros_like(t) for _ in range(dist.get_world_size())]
    dist.all_gather(out, t)
    return [int(v) for v in out]


def all_gather_with_grad(x, dim=0):
    """Concatenate ``x`` from every rank along ``dim`` (rank order), keeping the autograd graph.

    The backward gives this rank's slice the gradient summed over every rank's copy of the loss
    (see :class:`_AllGather`), which together with DDP's averaging is the single-process gradient.
    Ranks may hold different sizes along ``dim``; the other dimensions must agree.

    Args:
        x (Tensor): this rank's part, e.g. (B/N, D) embeddings.
        dim (int): the batch dimension.

    Returns:
        Tensor: (B, D) (with the default ``dim``); ``x`` itself without a multi-rank process group.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    dim = dim % x.dim()
    return _AllGather.apply(x, dim, _sizes(x.shape[dim], x.device))


def _all_gather_nograd(x, dim=0):
    sizes = _sizes(x.shape[dim], x.device)
    with torch.no_grad():
        return _AllGather.apply(x.detach(), dim % x.dim(), sizes)


def gather_for_loss(features, targets=None, dim=0):
    """The cross-rank losses' gather: ``features`` with gradient, ``targets`` without.

    A no-op (inputs returned as they are) when ``DIST.GATHER_LOSSES`` is False or no multi-rank
    process group runs, so single-process training is unchanged.

    Args:
        features (Tensor): this rank's features, batch along ``dim`` ((B/N, D) or SVRN's (T, B/N, L)).
        targets (Tensor or None): (B/N,) labels.
        dim (int): the batch dimension of ``features``.

    Returns:
        (Tensor, Tensor or None): the whole batch's features and labels, in rank order.
    """
    if not gather_enabled():
        return features, targets
    features = all_gather_with_grad(features, dim)
    if targets is not None:
        targets = _all_gather_nograd(targets.to(features.device), 0)
    return features, targets


# --------------------------------------------------------------------------------------------
# evaluation with the saved buffers
# --------------------------------------------------------------------------------------------
def broadcast_buffers(model, src=0):
    """Copy rank ``src``'s buffers (BatchNorm running statistics, ...) to every rank, in place.

    FastReID wraps the model with ``broadcast_buffers=False``, so each rank's BN statistics follow
    its own images while the checkpoint (written by rank 0) holds rank 0's. Called before every
    evaluation, this makes the printed metrics those of the saved model. Parameters need no
    broadcast: DDP keeps them identical. A no-op without a multi-rank process group.

    Args:
        model (nn.Module): the model, DDP-wrapped or not (every rank must call this).
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return
    module = model.module if isinstance(model, _TorchDDP) else model
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)


# --------------------------------------------------------------------------------------------
# DDP for CPU modules
# --------------------------------------------------------------------------------------------
class DistributedDataParallel(_TorchDDP):
    """torch's DDP that drops ``device_ids`` / ``output_device`` for modules not on CUDA.

    FastReID builds ``DistributedDataParallel(model, device_ids=[local_rank], ...)``; torch
    raises for a CPU module given ``device_ids``. Modules on CUDA are wrapped exactly as FastReID
    asks.
    """

    def __init__(self, module, device_ids=None, output_device=None, *args, **kwargs):
        on_cuda = any(p.is_cuda for p in module.parameters())
        if not on_cuda:
            device_ids, output_device = None, None
        super().__init__(module, device_ids, output_device, *args, **kwargs)


# --------------------------------------------------------------------------------------------
# FastReID's launch worker on CPU
# --------------------------------------------------------------------------------------------
def _distributed_worker(local_rank, main_func, world_size, num_gpus_per_machine, machine_rank,
                        dist_url, args):
    """FastReID's ``_distributed_worker`` (``fastreid.engine.launch``), with a gloo path.

    With CUDA this calls FastReID's own worker (NCCL, one GPU per process). Without CUDA it starts
    the gloo process group, the per-machine local groups FastReID's ``comm`` expects, limits each
    process to ``cpu_count / processes_per_machine`` threads unless ``OMP_NUM_THREADS`` is set, and
    runs ``main_func(*args)``. The collective timeout is ``FASTREID_PLUGINS_DIST_TIMEOUT`` seconds
    (default 1800), so a rank that dies mid-collective makes the others fail instead of hang.
    """
    from . import compat

    if torch.cuda.is_available():
        return compat.ORIGINALS["launch._distributed_worker"](
            local_rank, main_func, world_size, num_gpus_per_machine, machine_rank, dist_url, args)
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    timeout = datetime.timedelta(seconds=float(os.environ.get("FASTREID_PLUGINS_DIST_TIMEOUT", 1800)))
    try:
        dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size,
                                rank=global_rank, timeout=timeout)
    except Exception:
        logger.error(f"Process group URL: {dist_url} (gloo, rank {global_rank} of {world_size})")
        raise
    comm.synchronize()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_gpus_per_machine))
    assert comm._LOCAL_PROCESS_GROUP is None
    num_machines = world_size // num_gpus_per_machine
    for i in range(num_machines):
        ranks_on_i = list(range(i * num_gpus_per_machine, (i + 1) * num_gpus_per_machine))
        pg = dist.new_group(ranks_on_i)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = pg
    main_func(*args)


# --------------------------------------------------------------------------------------------
# one global P x K batch per step, split across ranks
# --------------------------------------------------------------------------------------------
class GlobalIdentitySampler(Sampler):
    """PK identity sampler drawing one global batch per step and giving rank r its r-th slice.

    Step s's global batch: P = ``batch_size / num_instances`` distinct identities drawn uniformly,
    K = ``num_instances`` images of each (without replacement when the identity has >= K images,
    with replacement otherwise), laid out identity after identity; rank r of W takes identities
    ``r P/W .. (r+1) P/W - 1`` (all K images of each, so every rank still holds positives when
    ``DIST.GATHER_LOSSES`` is off). The draw of step s depends only on ``(seed, s)`` (numpy's
    ``default_rng([seed, s])``), never on the world size or on earlier steps: W processes see
    exactly the global batches one process sees, and a resumed run restarts at any step
    (``start_iter``, or :meth:`load_state_dict` as :class:`fastreid_plugins.seeding.SeededSampler`
    calls it on ``--resume``) without replaying the earlier ones.

    Reference:
        Hermans, Beyer, Leibe. "In Defense of the Triplet Loss for Person Re-Identification",
        arXiv 1703.07737, Sec. 2 ("randomly sampling P classes (person identities), and then
        randomly sampling K images of each class"); CLIP-SENet Sec. 4.2: "each batch containing
        samples from 16 different vehicle identities, each represented by 8 images".

    Differs from FastReID's ``NaiveIdentitySampler``, which draws each rank's P/W identities
    separately (one step's global batch can repeat an identity across ranks), walks identities
    in passes that favour identities with many images, and seeds numpy's global RNG.

    Args:
        data_source (list): ``(img_path, pid, camid, ...)`` items (``dataset.img_items``).
        batch_size (int): the *global* batch size (``SOLVER.IMS_PER_BATCH``).
        num_instances (int): K (``DATALOADER.NUM_INSTANCE``).
        seed (int): the draw's seed (shared by all ranks).
        start_iter (int): the first global step to yield (resume).
        rank, world_size (int): default: the running process group's.

    Yields:
        int: dataset indices, ``batch_size / world_size`` per step (FastReID's ``BatchSampler``
        groups them into the rank's mini-batches).

    Raises:
        ValueError: ``batch_size`` is not a multiple of ``num_instances * world_size``, or the
            training set has fewer than P identities.
    """

    def __init__(self, data_source, batch_size, num_instances, seed, start_iter=0,
                 rank=None, world_size=None):
        self.rank = comm.get_rank() if rank is None else int(rank)
        self.world_size = comm.get_world_size() if world_size is None else int(world_size)
        self.batch_size, self.num_instances = int(batch_size), int(num_instances)
        if self.num_instances < 1 or self.batch_size % (self.num_instances * self.world_size):
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH={batch_size} must be a multiple of DATALOADER.NUM_INSTANCE="
                f"{num_instances} x world size {self.world_size} (= {num_instances * self.world_size}):"
                " each rank takes whole identities of the global P x K batch.")
        self.num_pids = self.batch_size // self.num_instances
        pid_index = {}
        for i, item in enumerate(data_source):
            pid_index.setdefault(item[1], []).append(i)
        self.pids = sorted(pid_index)
        self.pid_index = [np.asarray(pid_index[p], dtype=np.int64) for p in self.pids]
        if len(self.pids) < self.num_pids:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH={batch_size} / DATALOADER.NUM_INSTANCE={num_instances} = "
                f"{self.num_pids} identities per batch, but the training set has only "
                f"{len(self.pids)}: lower SOLVER.IMS_PER_BATCH or raise DATALOADER.NUM_INSTANCE.")
        self.seed, self.start_iter = int(seed), int(start_iter)

    def global_batch(self, step):
        """(batch_size,) dataset indices of global step ``step``: P identities x K images."""
        rng = np.random.default_rng([self.seed, int(step)])
        chosen = rng.choice(len(self.pids), size=self.num_pids, replace=False)
        out = []
        for k in chosen:
            idx = self.pid_index[k]
            out.append(rng.choice(idx, size=self.num_instances,
                                  replace=len(idx) < self.num_instances))
        return np.concatenate(out)

    def rank_batch(self, step):
        """This rank's slice of :meth:`global_batch` (``batch_size / world_size`` indices)."""
        n = self.batch_size // self.world_size
        return self.global_batch(step)[self.rank * n:(self.rank + 1) * n]

    def load_state_dict(self, state):
        """:mod:`fastreid_plugins.seeding`'s sampler protocol: the next ``iter()`` yields this
        rank's stream of seed ``state["seed"]`` from its ``state["position"]``-th index on (counted
        on this rank, 0-based). No other state exists: a step's draw depends on (seed, step) only."""
        self.seed = int(state["seed"])
        self.start_iter, self._skip = divmod(int(state["position"]), self.batch_size // self.world_size)

    def __iter__(self):
        step, skip = self.start_iter, getattr(self, "_skip", 0)
        while True:
            yield from self.rank_batch(step).tolist()[skip:]
            step, skip = step + 1, 0


def _sampler_seed(cfg):
    """``cfg.SEED`` when the config has one >= 0, else a random seed shared by all ranks. (Under
    :class:`fastreid_plugins.seeding.SeededSampler` the seed is then set from ``SEED`` again.)"""
    seed = cfg.get("SEED", -1)
    if seed is None or int(seed) < 0:
        seed = comm.shared_random_seed()
    return int(seed)


def same_on_all_ranks(value):
    """Rank 0's ``value`` on every rank (e.g. a seed one rank drew); ``value`` itself without a
    process group. Every rank must call it."""
    if comm.get_world_size() == 1:
        return value
    return comm.all_gather(value)[0]


def _use_global_sampler(cfg):
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name == "GlobalIdentitySampler":
        return True
    return (name == "NaiveIdentitySampler" and comm.get_world_size() > 1
            and "DIST" in cfg and cfg.DIST.GLOBAL_SAMPLER)


def _patch_train_loader():
    """FastReID's ``build_reid_train_loader(cfg, ...)``: :class:`GlobalIdentitySampler` under DDP
    (see the module doc). Wraps whatever ``build_reid_train_loader`` is in place, passing it the
    training set and the sampler, so other patches of the loader keep working."""
    import functools

    import fastreid.data.build as db
    from fastreid.config import CfgNode

    from .compat import patch_attr

    def wrap(original):
        @functools.wraps(original)
        def build_reid_train_loader(*args, **kwargs):
            cfg = args[0] if args else kwargs.get("cfg")
            if not (isinstance(cfg, CfgNode) and kwargs.get("sampler") is None
                    and _use_global_sampler(cfg)):
                return original(*args, **kwargs)
            kwargs.pop("cfg", None)
            train_set = kwargs.pop("train_set", None)
            if train_set is None:  # FastReID's own dataset construction, without its sampler
                c = cfg.clone()
                c.defrost()
                c.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
                train_set = db._train_loader_from_config(c, **kwargs)["train_set"]
            sampler = GlobalIdentitySampler(train_set.img_items, cfg.SOLVER.IMS_PER_BATCH,
                                            cfg.DATALOADER.NUM_INSTANCE, _sampler_seed(cfg))
            logger.info("Using training sampler GlobalIdentitySampler (one P x K batch per step, "
                        f"split over {comm.get_world_size()} rank(s))")
            return original(cfg, *args[1:], train_set=train_set, sampler=sampler, **kwargs)
        return build_reid_train_loader

    patch_attr(db, "build_reid_train_loader", "build_reid_train_loader", wrap,
               modules=["fastreid.data", "fastreid.engine.defaults", "fastreid_plugins.engine"],
               tag="train_loader.global_sampler")


def apply():
    """Patch FastReID's launch worker, DDP class and train-loader sampler choice (idempotent)."""
    import importlib

    import fastreid.engine.defaults as defaults

    from .compat import patch_attr

    # the package attribute ``fastreid.engine.launch`` is the function (``from .launch import *``)
    launch_mod = importlib.import_module("fastreid.engine.launch")

    patch_attr(launch_mod, "_distributed_worker", "launch._distributed_worker",
               lambda original: _distributed_worker, tag="launch.gloo")
    patch_attr(defaults, "DistributedDataParallel", "DistributedDataParallel",
               lambda original: DistributedDataParallel, tag="DDP.cpu")
    _patch_train_loader()
