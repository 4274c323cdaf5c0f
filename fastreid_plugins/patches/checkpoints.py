"""Checkpoints: FastReID's ``Checkpointer`` on torch >= 2.6 (``weights_only`` loading).

Target ``fastreid.utils.checkpoint.Checkpointer._load_file``; the loader itself is
:func:`fastreid_plugins.checkpoint.load_checkpoint_file`.
"""

from __future__ import annotations

from .. import upstream
from ..checkpoint import load_checkpoint_file
from .base import describe, patch_attr

__all__ = ["apply"]

describe("Checkpointer.weights_only", concern="checkpoints", changes_models=False,
         why="torch.load defaults to weights_only=True since torch 2.6, which refuses "
             "FastReID's own checkpoints (scheduler state). Loads them with the types FastReID "
             "writes allowed; a file needing more unpickling, a truncated file and a file that is "
             "not a checkpoint get errors naming the file.")


def apply() -> None:
    """Apply this module's patch (idempotent)."""
    def _load_file(self, f):
        return load_checkpoint_file(f)

    upstream.replace_private_method(
        "Checkpointer._load_file",
        lambda owner, name: patch_attr(owner, name, "Checkpointer._load_file",
                                       lambda original: _load_file,
                                       tag="Checkpointer.weights_only"))
