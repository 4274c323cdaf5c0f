"""Trainer / optimizer / AMP: FastReID's training loop on torch 2 and without CUDA.

Targets ``fastreid.solver.build`` (``build_optimizer``, ``get_default_optimizer_params``),
``fastreid.engine.train_loop.AMPTrainer`` and ``fastreid.utils.events.CommonMetricPrinter``.
"""

from __future__ import annotations

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import contextlib
import contextvars
import functools
import warnings
from typing import Dict, Iterator

import torch

from .base import describe, patch_attr

__all__ = ["apply", "param_group_overrides"]

describe("optimizer.zero_grad", concern="trainer", changes_models=True,
         why="Training updates no weight on torch >= 2: zero_grad() defaults to "
             "set_to_none=True and drops the ContiguousParams flat buffers' grads, so step() "
             "skips every parameter. The optimizer keeps (zeroes) its grad buffers.")
describe("optimizer.param_group_overrides", concern="trainer", changes_models=False,
         why="get_default_optimizer_params has no per-module hook; while "
             "param_group_overrides() is active, the listed parameters get their own lr factor "
             "and weight decay (CLIP-SENet's SEM). Without an active override: unchanged.")
describe("AMPTrainer.cpu", concern="trainer", changes_models=False,
         why="AMPTrainer.run_step asserts CUDA (AMP is on in FastReID's configs): fp32 on the "
             "CPU with one warning.")
describe("CommonMetricPrinter.same_iter", concern="trainer", changes_models=False,
         why="CommonMetricPrinter.write divides by zero when it writes twice at one iteration "
             "before the timer has a history (runs of <= 3 iterations).")


class _KeepContiguousGrads:
    """Mixin: ``zero_grad`` keeps (zeroes) the gradient buffers instead of dropping them.

    FastReID builds its optimizer over :class:`~fastreid.utils.params.ContiguousParams` flat
    buffers whose ``.grad`` is a buffer the model parameters' ``.grad`` are views of. torch>=2.0's
    ``zero_grad()`` defaults to ``set_to_none=True``, which replaces the flat buffers' grads by
    ``None``: backward then accumulates into the (orphaned) views and ``step()`` skips every
    parameter, so nothing is ever trained.
    """

    def zero_grad(self, set_to_none: bool = False):
        super().zero_grad(set_to_none=False)


def _keep_grad_class(opt_cls: type) -> type:
    if issubclass(opt_cls, _KeepContiguousGrads):
        return opt_cls
    return type(opt_cls.__name__, (_KeepContiguousGrads, opt_cls),
                {"__module__": opt_cls.__module__})


def _patch_optimizer() -> None:
    import fastreid.solver.build as sb

    def wrap(original):
        @functools.wraps(original)
        def build_optimizer(cfg, model, contiguous=True):
            optimizer, params = original(cfg, model, contiguous=contiguous)
            if contiguous:
                # the built instance's class gets the mixin (FastReID picks the class by name)
                optimizer.__class__ = _keep_grad_class(type(optimizer))
            return optimizer, params
        return build_optimizer

    patch_attr(sb, "build_optimizer", "build_optimizer", wrap,
               modules=["fastreid.solver", "fastreid.engine.defaults"], tag="optimizer.zero_grad")


#: id(parameter) -> {"lr": factor, "weight_decay": value or None}, set by param_group_overrides
_OVERRIDES: contextvars.ContextVar = contextvars.ContextVar("fastreid_plugins_param_overrides",
                                                            default=None)


@contextlib.contextmanager
def param_group_overrides(overrides: Dict[int, dict]) -> Iterator[None]:
    """While FastReID builds an optimizer, give some parameters their own lr and weight decay.

    Args:
        overrides: ``id(parameter) -> {"lr": factor (multiplies FastReID's lr),
            "weight_decay": value or None (None: FastReID's)}``.
    """
    token = _OVERRIDES.set(overrides)
    try:
        yield
    finally:
        _OVERRIDES.reset(token)


def _patch_optimizer_params() -> None:
    import fastreid.solver.build as sb

    def wrap(original):
        @functools.wraps(original)
        def get_default_optimizer_params(model, *args, **kwargs):
            params = original(model, *args, **kwargs)
            overrides = _OVERRIDES.get()
            if not overrides:
                return params
            for entry in params:
                o = overrides.get(id(entry["params"][0]))
                if o is not None:
                    entry["lr"] = entry["lr"] * o["lr"]
                    if o["weight_decay"] is not None:
                        entry["weight_decay"] = o["weight_decay"]
            return params
        return get_default_optimizer_params

    patch_attr(sb, "get_default_optimizer_params", "get_default_optimizer_params", wrap,
               modules=["fastreid.solver"], tag="optimizer.param_group_overrides")


def _patch_amp() -> None:
    from fastreid.engine import train_loop

    AMP = train_loop.AMPTrainer

    def wrap(original):
        @functools.wraps(original)
        def run_step(self):
            if torch.cuda.is_available():
                return original(self)
            if not getattr(AMP, "_fastreid_plugins_warned", False):  # warn once per process
                warnings.warn("SOLVER.AMP.ENABLED is True but CUDA is not available: "
                              "training in fp32 on the CPU instead.", RuntimeWarning, stacklevel=2)
                AMP._fastreid_plugins_warned = True
            return train_loop.SimpleTrainer.run_step(self)
        return run_step

    patch_attr(AMP, "run_step", "AMPTrainer.run_step", wrap, tag="AMPTrainer.cpu")


def _patch_metric_printer() -> None:
    from fastreid.utils import events

    def wrap(original):
        @functools.wraps(original)
        def write(self):
            last = getattr(self, "_last_write", None)
            if last is not None and last[0] == events.get_event_storage().iter:
                self._last_write = None
            return original(self)
        return write

    patch_attr(events.CommonMetricPrinter, "write", "CommonMetricPrinter.write", wrap,
               tag="CommonMetricPrinter.same_iter")


def apply() -> None:
    """Apply this module's patches (idempotent)."""
    _patch_optimizer()
    _patch_optimizer_params()
    _patch_amp()
    _patch_metric_printer()
