"""The training data path: dataset -> sampler -> seeded sampler -> loader, built once, checked once.

Every trainer of the package builds its training loader here
(:meth:`fastreid_plugins.engine.PluginTrainer.build_train_loader`, for every meta-architecture,
FastReID's ``Baseline`` included; CLIP-SENet's trainer through its ``dataset_cls``):

1. **items** (:func:`train_items`): FastReID's registered datasets of ``DATASETS.NAMES`` under
   :func:`~fastreid_plugins.data.root.datasets_root` (``DATASETS.COMBINEALL`` honoured), checked
   by :func:`~fastreid_plugins.data.validation.check_dataset_items` (not empty, every image file
   exists);
2. **dataset**: ``dataset_cls(items, build_transforms(cfg, is_train=True), relabel=True)``
   (FastReID's ``CommDataset`` by default; a trainer's own class, e.g. CLIP-SENet's
   ``SideInfoDataset``); refused when it holds fewer images than ``SOLVER.IMS_PER_BATCH``;
3. **sampler** (:func:`build_sampler`): FastReID's, chosen by ``DATALOADER.SAMPLER_TRAIN``
   (``TrainingSampler``, ``NaiveIdentitySampler``, ``BalancedIdentitySampler``, ... exactly as
   FastReID's ``build_reid_train_loader(cfg)`` chooses it), or
   :class:`~fastreid_plugins.distributed.GlobalIdentitySampler` when
   :func:`~fastreid_plugins.distributed.use_global_sampler` says so (under DDP with
   ``DIST.GLOBAL_SAMPLER``, or asked for by name). An identity (P x K) sampler's batch settings
   are checked first (:func:`~fastreid_plugins.data.validation.check_identity_batches`: an
   unfillable batch is an error, not a hang);
4. **seeded loader** (:func:`seeded_loader`): the sampler under
   :class:`~fastreid_plugins.seeding.SeededSampler` (seeded from ``SEED``, resumable at any
   position), the dataset under :class:`~fastreid_plugins.seeding.SeededDataset`, FastReID's
   ``BatchSampler`` of ``IMS_PER_BATCH / world size`` images and ``fast_batch_collator``, in a
   ``SeededLoaderX`` (:func:`~fastreid_plugins.seeding.seeded_loader_class`).

FastReID's ``build_reid_train_loader`` is not called (nor patched): its sampler choice is reused
through :func:`fastreid_plugins.upstream.train_loader_from_config`, its collate function, dataset
class and transforms directly. FastReID's own ``DefaultTrainer`` keeps FastReID's loader.
"""

from __future__ import annotations

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import logging
from typing import TYPE_CHECKING, Any, List, Optional, Type

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, Sampler

from .. import upstream
from ..distributed.sampler import GlobalIdentitySampler, use_global_sampler
from ..errors import DatasetError
from ..seeding import SeededDataset, SeededSampler, derive_seed, resolve_seed, seeded_loader_class
from .root import datasets_root
from .validation import check_dataset_items, check_identity_batches

if TYPE_CHECKING:
    from fastreid.config import CfgNode

__all__ = ["IDENTITY_SAMPLERS", "build_train_loader", "train_items", "build_sampler",
           "seeded_loader"]

logger = logging.getLogger(__name__)

#: ``DATALOADER.SAMPLER_TRAIN`` values that fill batches with P identities x K images
#: (:func:`~fastreid_plugins.data.validation.check_identity_batches` applies)
IDENTITY_SAMPLERS = ("NaiveIdentitySampler", "BalancedIdentitySampler", "SetReWeightSampler",
                     "GlobalIdentitySampler")


def train_items(cfg: CfgNode) -> List[tuple]:
    """The training items of ``cfg.DATASETS.NAMES``, read under :func:`datasets_root`, checked.

    Returns:
        list[tuple]: FastReID's ``(img_path, pid, camid, ...)`` items, datasets in config order.

    Raises:
        DatasetNotFoundError: a dataset folder or image is missing (FastReID's dataset classes
            check their folders through :mod:`fastreid_plugins.patches.datasets`).
        DatasetError: the training split is empty.
    """
    from fastreid.data.datasets import DATASET_REGISTRY
    from fastreid.utils import comm

    items: List[tuple] = []
    root = datasets_root()
    for name in cfg.DATASETS.NAMES:
        data = DATASET_REGISTRY.get(name)(root=root, combineall=cfg.DATASETS.COMBINEALL)
        if comm.is_main_process():
            data.show_train()
        items.extend(data.train)
    check_dataset_items(items, "train", cfg.DATASETS.NAMES)
    return items


def build_sampler(cfg: CfgNode, train_set: Dataset, seed: int) -> Sampler:
    """This rank's infinite training sampler over ``train_set`` (not yet seeded: see
    :class:`~fastreid_plugins.seeding.SeededSampler`).

    :class:`~fastreid_plugins.distributed.GlobalIdentitySampler` when
    :func:`~fastreid_plugins.distributed.use_global_sampler` (``seed``: its initial seed), else
    FastReID's sampler named by ``DATALOADER.SAMPLER_TRAIN``, built by FastReID's own
    ``_train_loader_from_config`` (per-process batch ``IMS_PER_BATCH / world size``).

    Raises:
        ConfigError: an identity sampler's batch can never be filled (see
            :func:`~fastreid_plugins.data.validation.check_identity_batches`).
        ValueError: FastReID's "Unknown training sampler".
    """
    from fastreid.utils import comm

    use_global = use_global_sampler(cfg)
    name = "GlobalIdentitySampler" if use_global else cfg.DATALOADER.SAMPLER_TRAIN
    if name in IDENTITY_SAMPLERS:
        check_identity_batches(train_set.img_items, cfg.SOLVER.IMS_PER_BATCH,
                               cfg.DATALOADER.NUM_INSTANCE, comm.get_world_size(), name)
    if not use_global:  # FastReID's choice by name (it logs "Using training sampler ...")
        return upstream.train_loader_from_config(
            cfg, train_set=train_set, transforms=getattr(train_set, "transform", None))["sampler"]
    logger.info("Using training sampler GlobalIdentitySampler (one P x K batch per step, split "
                f"over {comm.get_world_size()} rank(s))")
    return GlobalIdentitySampler(train_set.img_items, cfg.SOLVER.IMS_PER_BATCH,
                                 cfg.DATALOADER.NUM_INSTANCE, seed)


def seeded_loader(dataset: Dataset, sampler: Sampler, seed: int, total_batch_size: int,
                  num_workers: int) -> DataLoader:
    """The seeded, resumable loader over ``dataset`` drawing from ``sampler``.

    ``sampler`` goes under :class:`~fastreid_plugins.seeding.SeededSampler` (rank: this
    process's), grouped by FastReID's ``BatchSampler`` into ``total_batch_size / world size``
    indices (incomplete batches dropped, as FastReID); ``dataset`` goes under
    :class:`~fastreid_plugins.seeding.SeededDataset`; batches are collated by FastReID's
    ``fast_batch_collator``. ``DataLoader`` worker seeds come from a private generator seeded
    from ``seed``, so creating the iterator never shifts the model's torch stream.

    Args:
        dataset: the training dataset (``CommDataset``-like: ``img_items``, ``num_classes``).
        sampler: an infinite sampler (FastReID's, or one following the protocol of
            :mod:`fastreid_plugins.seeding`).
        seed (int): the run's seed (``SEED``).
        total_batch_size (int): ``SOLVER.IMS_PER_BATCH``, all processes together.
        num_workers (int): ``DATALOADER.NUM_WORKERS``.

    Returns:
        SeededLoaderX: its ``sampler_state`` attribute is the
        :class:`~fastreid_plugins.seeding.SeededSampler` (checkpointed as the sampler position).
    """
    from fastreid.data.build import fast_batch_collator
    from fastreid.utils import comm

    seeded = SeededSampler(sampler, seed, rank=comm.get_rank())
    batch_sampler = BatchSampler(seeded, total_batch_size // comm.get_world_size(), True)
    loader = seeded_loader_class()(
        comm.get_local_rank(), dataset=SeededDataset(dataset), batch_sampler=batch_sampler,
        num_workers=num_workers, collate_fn=fast_batch_collator, pin_memory=True,
        generator=torch.Generator().manual_seed(derive_seed(seed, 3)))
    loader.sampler_state = seeded
    return loader


def build_train_loader(cfg: CfgNode, dataset_cls: Optional[Type[Dataset]] = None,
                       seed: Optional[int] = None) -> DataLoader:
    """The training loader of ``cfg``: items -> dataset -> sampler -> seeded loader (see the
    module docstring), each built and checked once.

    Args:
        cfg: the run's config.
        dataset_cls: built as ``dataset_cls(items, transform, relabel=True)``; default FastReID's
            ``CommDataset`` (samples ``images/targets/camids/img_paths``).
        seed: the run's seed; default :func:`~fastreid_plugins.seeding.resolve_seed` of ``cfg``.

    Returns:
        SeededLoaderX: an infinite loader of ``IMS_PER_BATCH / world size`` samples a batch; its
        ``dataset`` reports ``dataset_cls`` (``isinstance`` holds) and its ``sampler_state`` is
        the resumable :class:`~fastreid_plugins.seeding.SeededSampler`.

    Raises:
        DatasetNotFoundError: a dataset folder or training image is missing.
        DatasetError: the training split is empty or smaller than ``SOLVER.IMS_PER_BATCH``.
        ConfigError: an identity sampler could never fill a batch.
    """
    from fastreid.data.common import CommDataset
    from fastreid.data.transforms import build_transforms

    seed = resolve_seed(cfg) if seed is None else int(seed)
    items = train_items(cfg)
    cls: Any = CommDataset if dataset_cls is None else dataset_cls
    train_set = cls(items, build_transforms(cfg, is_train=True), relabel=True)
    if len(train_set) < cfg.SOLVER.IMS_PER_BATCH:
        raise DatasetError(
            f"The training set has {len(train_set)} images, fewer than "
            f"SOLVER.IMS_PER_BATCH={cfg.SOLVER.IMS_PER_BATCH}: an epoch would have no "
            "iteration. Lower SOLVER.IMS_PER_BATCH.")
    sampler = build_sampler(cfg, train_set, seed)
    return seeded_loader(train_set, sampler, seed, cfg.SOLVER.IMS_PER_BATCH,
                         cfg.DATALOADER.NUM_WORKERS)
