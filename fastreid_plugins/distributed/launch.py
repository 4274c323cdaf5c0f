"""Launch and DDP on hosts without CUDA: FastReID's worker with a gloo path, torch's DDP for
CPU modules, and evaluation with rank 0's buffers.

FastReID 1.4.0 starts DDP through ``fastreid.engine.launch`` (``--num-gpus``, ``--num-machines``,
``--machine-rank``, ``--dist-url``), but its worker asserts CUDA and hard-codes NCCL, and
``DefaultTrainer`` wraps the model in ``DistributedDataParallel(device_ids=[local_rank])``, which
torch refuses for CPU modules; the model is also wrapped with ``broadcast_buffers=False``, so
every rank keeps its own BatchNorm statistics while the checkpoint holds rank 0's.
:mod:`fastreid_plugins.patches.launch` installs :func:`distributed_worker` and
:class:`DistributedDataParallel`; :class:`~fastreid_plugins.engine.PluginTrainer` calls
:func:`broadcast_buffers` before evaluating.

The environment variable ``FASTREID_PLUGINS_DIST_TIMEOUT`` (seconds, default 1800) bounds how long a
gloo collective waits for a rank that died, so the others fail instead of hanging.
"""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import datetime
import logging
import os
from typing import Any, Callable, Optional, Sequence, Tuple, TypeVar, Union

import torch
import torch.distributed as dist
from fastreid.utils import comm
from torch import nn
from torch.nn.parallel import DistributedDataParallel as _TorchDDP

from .. import upstream
from .gather import is_multi_rank

__all__ = ["distributed_worker", "DistributedDataParallel", "broadcast_buffers",
           "same_on_all_ranks"]

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics, ...) to every rank, in place.

    FastReID wraps the model with ``broadcast_buffers=False``, so each rank's BN statistics follow
    its own images while the checkpoint (written by rank 0) holds rank 0's. Called before every
    evaluation, this makes the printed metrics those of the saved model. Parameters need no
    broadcast: DDP keeps them identical. A no-op without a multi-rank process group.

    Args:
        model (nn.Module): the model, DDP-wrapped or not (every rank must call this).
    """
    if not is_multi_rank():
        return
    module = model.module if isinstance(model, _TorchDDP) else model
    for buf in module.buffers():
        dist.broadcast(buf.data, src=src)


class DistributedDataParallel(_TorchDDP):
    """torch's DDP that drops ``device_ids`` / ``output_device`` for modules not on CUDA.

    FastReID builds ``DistributedDataParallel(model, device_ids=[local_rank], ...)``; torch
    raises for a CPU module given ``device_ids``. Modules on CUDA are wrapped exactly as FastReID
    asks.
    """

    def __init__(self, module: nn.Module,
                 device_ids: Optional[Sequence[Union[int, torch.device]]] = None,
                 output_device: Optional[Union[int, torch.device]] = None, *args: Any,
                 **kwargs: Any) -> None:
        on_cuda = any(p.is_cuda for p in module.parameters())
        if not on_cuda:
            device_ids, output_device = None, None
        super().__init__(module, device_ids, output_device, *args, **kwargs)


def distributed_worker(local_rank: int, main_func: Callable[..., Any], world_size: int,
                       num_gpus_per_machine: int, machine_rank: int, dist_url: str,
                       args: Tuple[Any, ...]) -> None:
    """FastReID's ``_distributed_worker`` (``fastreid.engine.launch``) for hosts without CUDA.

    The launch patch (:mod:`fastreid_plugins.patches.launch`) installs it in FastReID's place on
    hosts without CUDA only (``mp.spawn`` pickles it by name, so it is a module-level function);
    with CUDA FastReID's own worker (NCCL, one GPU per process) stays. It starts
    the gloo process group, the per-machine local groups FastReID's ``comm`` expects, limits each
    process to ``cpu_count / processes_per_machine`` threads unless ``OMP_NUM_THREADS`` is set, and
    runs ``main_func(*args)``. The collective timeout is ``FASTREID_PLUGINS_DIST_TIMEOUT`` seconds
    (default 1800), so a rank that dies mid-collective makes the others fail instead of hang.

    Raises:
        RuntimeError: CUDA is available (FastReID's own worker is the one to use there).
    """
    if torch.cuda.is_available():
        raise RuntimeError("distributed_worker is the gloo (CPU) launch worker; with CUDA, "
                           "FastReID's own fastreid.engine.launch._distributed_worker runs (the "
                           "launch patch is not applied on a CUDA host).")
    global_rank = machine_rank * num_gpus_per_machine + local_rank
    timeout = datetime.timedelta(
        seconds=float(os.environ.get("FASTREID_PLUGINS_DIST_TIMEOUT", 1800)))
    try:
        dist.init_process_group(backend="gloo", init_method=dist_url, world_size=world_size,
                                rank=global_rank, timeout=timeout)
    except Exception:
        logger.error(f"Process group URL: {dist_url} (gloo, rank {global_rank} of {world_size})")
        raise
    comm.synchronize()
    if "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // num_gpus_per_machine))
    assert upstream.local_process_group() is None
    num_machines = world_size // num_gpus_per_machine
    for i in range(num_machines):
        ranks_on_i = list(range(i * num_gpus_per_machine, (i + 1) * num_gpus_per_machine))
        pg = dist.new_group(ranks_on_i)
        if i == machine_rank:
            upstream.set_local_process_group(pg)
    main_func(*args)


def same_on_all_ranks(value: _T) -> _T:
    """Rank 0's ``value`` on every rank (e.g. a seed one rank drew); ``value`` itself without a
    process group. Every rank must call it."""
    if comm.get_world_size() == 1:
        return value
    return comm.all_gather(value)[0]
