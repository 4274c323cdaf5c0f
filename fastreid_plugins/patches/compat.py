"""Torch 2 / Python 3.11: names FastReID 1.4.0 imports that no longer exist.

These must be in place *before* ``fastreid.data``, ``fastreid.engine`` or ``fastreid.evaluation``
is imported (``fastreid/data/build.py`` and ``fastreid/evaluation/testing.py`` import them at module
level). Importing this module applies them, so every module of the package that imports FastReID
imports it first::

    import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)
    # isort: split
    from fastreid.data import ...

(``tests/test_layers.py`` checks that each does; ruff's isort keeps the line above the rest). They
only add names FastReID expects and that are gone (nothing existing is replaced), so they are not
counted as changes to FastReID's behaviour.
"""

from __future__ import annotations

import collections
import collections.abc
import importlib
import sys
import types

from ..errors import missing_dependency
from .base import APPLIED, PATCHES, describe

# torch first: without it FastReID fails too, and "install FastReID" would be wrong
try:
    import torch
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise missing_dependency("torch", e) from None

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


apply_import_shims()
try:
    import fastreid  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    if getattr(e, "name", None) == "torch" or str(e).startswith("No module named 'torch"):
        raise missing_dependency("torch", e) from None
    raise missing_dependency("fastreid", e) from None
