"""Every change this package makes to FastReID 1.4.0 (and torch), one module per concern.

FastReID's files are never edited or copied: each patch replaces one attribute from our side,
through :func:`~fastreid_plugins.patches.base.patch_attr`, idempotently, and only where needed
(a FastReID git checkout on ``PYTHONPATH`` and a CUDA machine run the same code).
``python -m fastreid_plugins.patches`` prints every patch: its target, the FastReID / torch bug or
gap it answers, and whether it changes FastReID's own models' behaviour.

==================  =====================================================================
module              concern
==================  =====================================================================
:mod:`.base`        ``patch_attr`` and the records (leaf: imports nothing of the package)
:mod:`.compat`      torch 2 / Python 3.11 import shims (applied when this package is imported)
:mod:`.data_loading`  DataLoaderX without CUDA, loader-thread errors, test-loader workers
:mod:`.trainer`     optimizer grads on torch 2, per-parameter lr overrides, AMP on CPU
:mod:`.evaluation`  no run-time Cython compilation, re-ranking on faiss-CPU
:mod:`.checkpoints`  ``weights_only`` checkpoint loading with clear errors
:mod:`.backbones`   strict ImageNet weights, IBN-Net layout, offline mode, out-of-place
                    normalisation
:mod:`.launch`      gloo launch worker, DDP for CPU modules
:mod:`.datasets`    dataset validation (missing folders, unreadable images, bad lists)
==================  =====================================================================

:func:`apply` is called once, by ``import fastreid_plugins``.
"""

from .base import APPLIED, ORIGINALS, PATCHES, Patch, patch_attr
from .compat import apply_import_shims

apply_import_shims()  # before anything below imports fastreid.data

from . import (backbones, checkpoints, data_loading, datasets, evaluation,  # noqa: E402
               launch, trainer)

__all__ = ["APPLIED", "ORIGINALS", "PATCHES", "Patch", "patch_attr", "apply", "report"]

#: the concern modules in the order :func:`apply` applies them
MODULES = (trainer, data_loading, evaluation, checkpoints, backbones, launch, datasets)


def apply() -> None:
    """Apply every patch (idempotent)."""
    apply_import_shims()
    for module in MODULES:
        module.apply()


def report() -> str:
    """Every described patch, one block each: tag, concern, targets, why, model behaviour
    (grouped by concern module, in :data:`MODULES` order)."""
    import textwrap

    order = ["compat"] + [m.__name__.rsplit(".", 1)[1] for m in MODULES]
    lines = []
    for p in sorted(PATCHES.values(), key=lambda p: order.index(p.concern)):
        state = "applied" if p.tag in APPLIED else "not applied (not needed here)"
        lines.append(f"{p.tag}  [{p.concern}; {state}; "
                     f"{'CHANGES' if p.changes_models else 'keeps'} FastReID's models' behaviour]")
        for t in p.targets or ["(none patched in this process)"]:
            lines.append(f"    target: {t}")
        lines.append(textwrap.fill(p.why, 100, initial_indent="    why:    ",
                                   subsequent_indent="            "))
    n_changes = sum(p.changes_models for p in PATCHES.values())
    lines.append(f"\n{len(PATCHES)} patches ({len(APPLIED)} applied here); {n_changes} change the "
                 "behaviour of FastReID's own models.")
    return "\n".join(lines)
