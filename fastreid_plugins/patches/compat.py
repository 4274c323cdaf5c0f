"""Torch 2 / Python 3.11: names FastReID 1.4.0 imports that no longer exist.

These must be in place *before* ``fastreid.data`` is imported (``fastreid/data/build.py`` and
``fastreid/evaluation/testing.py`` import them at module level): :mod:`fastreid_plugins.patches`
calls :func:`apply_import_shims` when it is imported, ahead of every other patch module.
"""

from __future__ import annotations

import collections
import collections.abc
import importlib
import sys
import types

import torch

from .base import APPLIED, PATCHES, describe

__all__ = ["apply_import_shims"]

describe("torch._six", concern="compat", changes_models=False,
         why="torch 2.0 removed torch._six; FastReID's data/build.py imports string_classes "
             "from it. A stand-in module provides the names.")
describe("collections.Mapping", concern="compat", changes_models=False,
         why="Python 3.10 removed the collections ABC aliases (collections.Mapping, ...) that "
             "FastReID's data/build.py and evaluation/testing.py import.")


def _record(tag: str, target: str) -> None:
    if target not in PATCHES[tag].targets:
        PATCHES[tag].targets.append(target)
    if tag not in APPLIED:
        APPLIED.append(tag)


def apply_import_shims() -> None:
    """Provide ``torch._six.string_classes`` (and friends) and ``collections.Mapping`` & co.

    Idempotent; a no-op on a torch / Python that still has them.
    """
    if "torch._six" not in sys.modules:
        try:
            importlib.import_module("torch._six")  # torch < 2.0 still has it
        except ImportError:
            six = types.ModuleType("torch._six")
            six.string_classes = (str, bytes)
            six.int_classes = (int,)
            six.container_abcs = collections.abc
            six.inf = float("inf")
            sys.modules["torch._six"] = six
            torch._six = six
            _record("torch._six", "torch._six")
    for name in ("Mapping", "MutableMapping", "Sequence", "Iterable", "Callable"):
        if not hasattr(collections, name):
            setattr(collections, name, getattr(collections.abc, name))
            _record("collections.Mapping", f"collections.{name}")
