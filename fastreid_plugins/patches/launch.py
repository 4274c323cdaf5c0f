"""Launch / DDP: FastReID's multi-process training on hosts without CUDA, and one global
identity batch per step under DDP.

Targets ``fastreid.engine.launch._distributed_worker``, ``fastreid.engine.defaults.
DistributedDataParallel`` and ``fastreid.data.build.build_reid_train_loader``; the code they
install is :mod:`fastreid_plugins.distributed`'s.
"""

from __future__ import annotations

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)
import functools
import logging

from .. import upstream
from ..distributed import (DistributedDataParallel, GlobalIdentitySampler, distributed_worker,
                           sampler_seed, use_global_sampler)
from .base import describe, patch_attr

__all__ = ["apply"]

logger = logging.getLogger(__name__)

describe("launch.gloo", concern="launch", changes_models=False,
         why="FastReID's launch worker asserts CUDA and hard-codes NCCL: without CUDA the "
             "workers use gloo (applied only on hosts without CUDA), with a collective "
             "timeout (FASTREID_PLUGINS_DIST_TIMEOUT) so a dead rank fails the others.")
describe("DDP.cpu", concern="launch", changes_models=False,
         why="DefaultTrainer wraps the model in DistributedDataParallel(device_ids=[rank]), "
             "which torch refuses for CPU modules: no device_ids for modules not on CUDA.")
describe("train_loader.global_sampler", concern="launch", changes_models=True,
         why="NaiveIdentitySampler draws each rank's identities separately (an identity can "
             "repeat across the ranks of one step): under DDP (DIST.GLOBAL_SAMPLER) one global "
             "P x K batch per step is split across ranks. Single-process training unchanged.")


def _patch_train_loader() -> None:
    import fastreid.data.build as db
    from fastreid.config import CfgNode
    from fastreid.utils import comm

    def wrap(original):
        @functools.wraps(original)
        def build_reid_train_loader(*args, **kwargs):
            cfg = args[0] if args else kwargs.get("cfg")
            if not (isinstance(cfg, CfgNode) and kwargs.get("sampler") is None
                    and use_global_sampler(cfg)):
                return original(*args, **kwargs)
            kwargs.pop("cfg", None)
            train_set = kwargs.pop("train_set", None)
            if train_set is None:  # FastReID's own dataset construction, without its sampler
                c = cfg.clone()
                c.defrost()
                c.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
                train_set = upstream.train_loader_from_config(c, **kwargs)["train_set"]
            sampler = GlobalIdentitySampler(train_set.img_items, cfg.SOLVER.IMS_PER_BATCH,
                                            cfg.DATALOADER.NUM_INSTANCE, sampler_seed(cfg))
            logger.info("Using training sampler GlobalIdentitySampler (one P x K batch per step, "
                        f"split over {comm.get_world_size()} rank(s))")
            return original(cfg, *args[1:], train_set=train_set, sampler=sampler, **kwargs)
        return build_reid_train_loader

    patch_attr(db, "build_reid_train_loader", "build_reid_train_loader", wrap,
               modules=["fastreid.data", "fastreid.engine.defaults", "fastreid_plugins.engine"],
               tag="train_loader.global_sampler")


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
    _patch_train_loader()
