"""Data loading: FastReID's loaders on hosts without CUDA, loader-thread errors, test workers.

Targets ``fastreid.data.data_utils`` (``DataLoaderX``, ``BackgroundGenerator``) and
``fastreid.data.build`` (``build_reid_test_loader``, the datasets root ``_root``).
"""

from __future__ import annotations

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import torch

from .. import upstream
from .base import describe, patch_attr

__all__ = ["apply"]

describe("DataLoaderX.cpu", concern="data_loading", changes_models=False,
         why="DataLoaderX creates a CUDA stream and its prefetch thread calls "
             "torch.cuda.set_device: without CUDA it fails. CPU path without streams (pinned "
             "memory off); FastReID's path unchanged with CUDA.")
describe("loader_thread.errors", concern="data_loading", changes_models=False,
         why="BackgroundGenerator.run dies on an exception (e.g. an unreadable image) before its "
             "end-of-data marker and the consumer waits on the queue forever. The exception is "
             "passed through the queue and raised in the consumer's thread.")
describe("test_loader.num_workers", concern="data_loading", changes_models=False,
         why="build_reid_test_loader(cfg, ...) ignores DATALOADER.NUM_WORKERS (always 4).")
describe("datasets_root", concern="data_loading", changes_models=False,
         why="fastreid.data.build reads FASTREID_DATASETS once, at import, into _root: "
             "fastreid_plugins.data.set_datasets_root (the one setter; the package's loaders "
             "read fastreid_plugins.data.datasets_root()) points it at the new folder too (a "
             "setting, not a wrapper: patches.base.set_module_global).")


def _cuda() -> bool:
    return torch.cuda.is_available()


def _wrap_init(original):
    def __init__(self, local_rank, **kwargs):
        if _cuda():
            return original(self, local_rank, **kwargs)
        kwargs["pin_memory"] = False
        torch.utils.data.DataLoader.__init__(self, **kwargs)
        self.stream = None
        self.local_rank = local_rank
    return __init__


def _wrap_preload(original):
    def preload(self):
        if self.stream is not None:
            return original(self)
        self.batch = next(self.iter, None)
    return preload


def _wrap_next(original):
    def __next__(self):
        if self.stream is not None:
            return original(self)
        batch = self.batch
        if batch is None:
            raise StopIteration
        self.preload()
        return batch
    return __next__


def _wrap_run(original):
    def run(self):
        if _cuda():
            return original(self)
        for item in self.generator:
            if self.exit_event.is_set():
                break
            self.queue.put(item)
        self.queue.put(None)
    return run


def _patch_dataloader() -> None:
    import fastreid.data.data_utils as du

    Loader, Gen = du.DataLoaderX, du.BackgroundGenerator
    for owner, name, wrap in ((Loader, "__init__", _wrap_init), (Loader, "preload", _wrap_preload),
                              (Loader, "__next__", _wrap_next), (Gen, "run", _wrap_run)):
        patch_attr(owner, name, f"{owner.__name__}.{name}", wrap, tag="DataLoaderX.cpu")


class _LoaderThreadError:
    """What the loader thread puts on its queue instead of dying silently."""

    def __init__(self, error: BaseException):
        self.error = error


def _patch_loader_thread_errors() -> None:
    import fastreid.data.data_utils as du

    def wrap_run(original):
        def run(self):
            try:
                original(self)
            except BaseException as e:  # noqa: B902  (whatever it is, the consumer must see it)
                self.queue.put(_LoaderThreadError(e))
        return run

    def wrap_next(original):
        def next(self):
            item = original(self)
            if isinstance(item, _LoaderThreadError):
                self.queue.put(item)
                raise item.error
            return item
        return next

    patch_attr(du.BackgroundGenerator, "run", "BackgroundGenerator.run.errors", wrap_run,
               tag="loader_thread.errors")
    patch_attr(du.BackgroundGenerator, "next", "BackgroundGenerator.next", wrap_next,
               tag="loader_thread.errors")


def _patch_test_loader_workers() -> None:
    import fastreid.data.build as db
    from fastreid.config import configurable

    original_from_config = upstream.test_loader_from_config()

    def _from_config(cfg, **kwargs):
        ret = original_from_config(cfg, **kwargs)
        ret.setdefault("num_workers", cfg.DATALOADER.NUM_WORKERS)
        return ret

    patch_attr(db, "build_reid_test_loader", "build_reid_test_loader",
               lambda original: configurable(from_config=_from_config)(original.__wrapped__),
               modules=["fastreid.data", "fastreid.engine.defaults"],
               tag="test_loader.num_workers")


def apply() -> None:
    """Apply this module's patches (idempotent)."""
    _patch_dataloader()
    _patch_loader_thread_errors()
    _patch_test_loader_workers()
