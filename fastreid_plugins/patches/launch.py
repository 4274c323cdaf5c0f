"""Launch / DDP: FastReID's multi-process training on hosts without CUDA.

Targets ``fastreid.engine.launch._distributed_worker`` and ``fastreid.engine.defaults.
DistributedDataParallel``; the code they install is :mod:`fastreid_plugins.distributed`'s. (The
global identity sampler under DDP is no patch: the plugins' trainer builds its training loader
itself, :mod:`fastreid_plugins.data.train_loader`.)
"""

from __future__ import annotations

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

from .. import upstream
from ..distributed import DistributedDataParallel, distributed_worker
from .base import describe, patch_attr

__all__ = ["apply"]

describe("launch.gloo", concern="launch", changes_models=False,
         why="FastReID's launch worker asserts CUDA and hard-codes NCCL: without CUDA the "
             "workers use gloo (applied only on hosts without CUDA), with a collective "
             "timeout (FASTREID_PLUGINS_DIST_TIMEOUT) so a dead rank fails the others.")
describe("DDP.cpu", concern="launch", changes_models=False,
         why="DefaultTrainer wraps the model in DistributedDataParallel(device_ids=[rank]), "
             "which torch refuses for CPU modules: no device_ids for modules not on CUDA.")


def apply() -> None:
    """Apply this module's patches (idempotent)."""
    import fastreid.engine.defaults as defaults
    import torch

    if not torch.cuda.is_available():  # with CUDA, FastReID's own NCCL worker stays
        upstream.replace_launch_worker(
            lambda module, name: patch_attr(module, name, "launch._distributed_worker",
                                            lambda original: distributed_worker,
                                            tag="launch.gloo"))
    patch_attr(defaults, "DistributedDataParallel", "DistributedDataParallel",
               lambda original: DistributedDataParallel, tag="DDP.cpu")
