"""Every change this package makes to FastReID 1.4.0 (and torch), one module per concern.

FastReID's files are never edited or copied: each patch replaces one attribute from our side,
through :func:`~fastreid_plugins.patches.base.patch_attr`, idempotently, and only where needed
(a FastReID git checkout on ``PYTHONPATH`` and a CUDA machine run the same code).
``python -m fastreid_plugins.patches`` prints every patch: its target, the FastReID / torch bug or
gap it answers, whether it changes FastReID's own models' behaviour, and whether it is active in
that process.

Importing this package applies nothing. :func:`apply` applies every patch; it is called by
:func:`fastreid_plugins.activate`, by importing a method package (``import fastreid_plugins.svrn``)
and by the command-line entry points. :func:`active` lists what is applied in this process.

==================  =====================================================================
module              concern
==================  =====================================================================
:mod:`.base`        ``patch_attr`` and the records (leaf: imports nothing of the package)
:mod:`.compat`      torch 2 / Python 3.11 import shims: importing it makes FastReID importable
                    (every module that imports FastReID imports it first)
:mod:`.data_loading`  DataLoaderX without CUDA, loader-thread errors, test-loader workers
:mod:`.trainer`     optimizer grads on torch 2, per-parameter lr overrides, AMP on CPU
:mod:`.evaluation`  no run-time Cython compilation, re-ranking on faiss-CPU
:mod:`.checkpoints`  ``weights_only`` checkpoint loading with clear errors
:mod:`.backbones`   strict ImageNet weights, IBN-Net layout, offline mode, out-of-place
                    normalisation
:mod:`.launch`      gloo launch worker, DDP for CPU modules
:mod:`.datasets`    dataset validation (missing folders, unreadable images, bad lists)
==================  =====================================================================
"""

from __future__ import annotations

from types import ModuleType
from typing import List, Tuple

from .base import APPLIED, ORIGINALS, PATCHES, Patch, patch_attr

__all__ = ["APPLIED", "ORIGINALS", "PATCHES", "Patch", "patch_attr", "apply", "active",
           "modules", "report"]


def modules() -> Tuple[ModuleType, ...]:
    """The concern modules, in the order :func:`apply` applies them (importing them describes
    their patches, :data:`PATCHES`, and applies nothing)."""
    from . import (
        backbones,
        checkpoints,
        compat,  # noqa: F401  (before anything below imports fastreid.data)
        data_loading,
        datasets,
        evaluation,
        launch,
        trainer,
    )

    return (trainer, data_loading, evaluation, checkpoints, backbones, launch, datasets)


def apply() -> None:
    """Apply every patch (idempotent: a second call changes nothing)."""
    from .compat import apply_import_shims

    apply_import_shims()
    for module in modules():
        module.apply()


def active() -> List[str]:
    """The tags of the patches applied in this process, in the order they were applied."""
    return list(APPLIED)


def report() -> str:
    """Every described patch, one block each: tag, concern, targets, why, model behaviour and
    whether it is active in this process (grouped by concern module, in :func:`apply`'s order)."""
    import textwrap

    order = ["compat"] + [m.__name__.rsplit(".", 1)[1] for m in modules()]
    lines = []
    for p in sorted(PATCHES.values(), key=lambda p: order.index(p.concern)):
        state = ("active" if p.tag in APPLIED else "not active in this process")
        lines.append(f"{p.tag}  [{p.concern}; {state}; "
                     f"{'CHANGES' if p.changes_models else 'keeps'} FastReID's models' behaviour]")
        for t in p.targets or ["(not patched in this process)"]:
            lines.append(f"    target: {t}")
        lines.append(textwrap.fill(p.why, 100, initial_indent="    why:    ",
                                   subsequent_indent="            "))
    n_changes = sum(p.changes_models for p in PATCHES.values())
    lines.append(f"\n{len(PATCHES)} patches ({len(APPLIED)} active in this process); {n_changes} "
                 "change the behaviour of FastReID's own models.")
    return "\n".join(lines)
