"""The one way the package changes FastReID or torch: :func:`patch_attr`, and its records.

A leaf module: it imports nothing of the package (and nothing of FastReID), so every layer may use
it without an import cycle. Every patch in :mod:`fastreid_plugins.patches` goes through
:func:`patch_attr`; each patch is described once with :func:`describe` (its target, the FastReID /
torch bug or gap it answers, and whether it changes the behaviour of FastReID's own models), and
``python -m fastreid_plugins.patches`` prints the descriptions.

Records:

* :data:`APPLIED`: the tags of the patches applied in this process, in order;
* :data:`ORIGINALS`: the unpatched attributes by key, so a test can show the failure each patch
  fixes by calling the original;
* :data:`PATCHES`: tag -> :class:`Patch` (description and the patched targets).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence

__all__ = ["APPLIED", "ORIGINALS", "PATCHES", "Patch", "describe", "patch_attr", "is_patched",
           "set_module_global"]

APPLIED: List[str] = []
ORIGINALS: Dict[str, Any] = {}

#: attribute on a wrapper: the set of ORIGINALS keys applied to this attribute so far
_KEYS = "_fastreid_plugins_patched"


@dataclass
class Patch:
    """One patch's description (see :func:`describe`)."""

    tag: str
    concern: str
    why: str
    changes_models: bool
    targets: List[str] = field(default_factory=list)


PATCHES: Dict[str, Patch] = {}


def describe(tag: str, *, concern: str, why: str, changes_models: bool) -> None:
    """Describe patch ``tag`` (idempotent; the targets are filled in by :func:`patch_attr`).

    Args:
        tag: the name recorded in :data:`APPLIED`.
        concern: the module of :mod:`fastreid_plugins.patches` that owns it (``"data"``, ...).
        why: the FastReID / torch bug or gap the patch answers, in one or two sentences.
        changes_models: whether FastReID's own models (``Baseline``, ``MGN``, its backbones)
            compute or train differently with the patch (False: it only makes FastReID run).
    """
    if tag not in PATCHES:
        PATCHES[tag] = Patch(tag, concern, why, changes_models)


def is_patched(owner: Any, name: str, key: Optional[str] = None) -> bool:
    """Whether ``owner.<name>`` carries a patch (``key``'s, when given)."""
    keys = getattr(getattr(owner, name, None), _KEYS, None)
    if not keys:
        return False
    return key is None or key in keys


def _target(owner: Any, name: str) -> str:
    prefix = getattr(owner, "__module__", None) if isinstance(owner, type) else None
    qual = getattr(owner, "__qualname__", None) or getattr(owner, "__name__", repr(owner))
    if prefix and isinstance(owner, type):
        qual = f"{prefix}.{qual}"
    return f"{qual}.{name}"


def patch_attr(owner: Any, name: str, key: str, make_wrapper: Callable[[Any], Any], *,
               modules: Sequence[str] = (), tag: Optional[str] = None,
               applied: Optional[List[str]] = None) -> bool:
    """Replace ``owner.<name>`` by ``make_wrapper(original)``, once per ``key`` (idempotent).

    If the attribute already carries the patch ``key``, do nothing; otherwise keep the original in
    :data:`ORIGINALS` under ``key``, mark the wrapper, assign it to ``owner`` and to every module
    named in ``modules`` that holds the original object (FastReID re-exports many functions,
    ``from .build import build_optimizer``, so a patch must reach every module that bound the name
    at import time), record the target under ``tag`` in :data:`PATCHES` and ``tag`` in ``applied``
    (default :data:`APPLIED`) unless it is already there. Two patches of one attribute (different
    keys) stack: the second wraps the first.

    Args:
        owner: the module or class holding the attribute.
        name: the attribute.
        key: the :data:`ORIGINALS` key for the unpatched attribute.
        make_wrapper: ``original -> replacement``; called only when patching.
        modules: further module names that re-export the attribute.
        tag: the name recorded in ``applied`` (``None``: record nothing).
        applied: the list of applied patch names (default :data:`APPLIED`).

    Returns:
        True if this call applied the patch, False if it was already in place.

    Raises:
        AttributeError: ``owner`` has no attribute ``name`` (upstream renamed or removed it).
    """
    if is_patched(owner, name, key):
        return False
    original = getattr(owner, name)
    ORIGINALS[key] = original
    new = make_wrapper(original)
    keys = set(getattr(original, _KEYS, ())) | {key}
    try:
        setattr(new, _KEYS, keys)
    except (AttributeError, TypeError):  # e.g. a bound builtin: wrap it in a plain function
        inner = new

        def new(*args, **kwargs):
            return inner(*args, **kwargs)
        setattr(new, _KEYS, keys)
    setattr(owner, name, new)
    for mod_name in modules:
        mod = sys.modules.get(mod_name)
        if mod is not None and getattr(mod, name, None) is original:
            setattr(mod, name, new)
    if tag is not None:
        if tag in PATCHES and _target(owner, name) not in PATCHES[tag].targets:
            PATCHES[tag].targets.append(_target(owner, name))
        applied = APPLIED if applied is None else applied
        if tag not in applied:
            applied.append(tag)
    return True


def set_module_global(module: Any, name: str, value: Any, *, tag: str) -> None:
    """Set a FastReID module's global setting ``module.<name> = value`` (not a wrapper: e.g. the
    datasets root ``fastreid.data.build._root`` that FastReID reads from ``FASTREID_DATASETS``
    once at import). The first call keeps the original value in :data:`ORIGINALS` and records
    ``tag`` like :func:`patch_attr`.

    Raises:
        AttributeError: ``module`` has no global ``name`` (upstream renamed it).
    """
    key = f"{module.__name__}.{name}"
    original = getattr(module, name)
    ORIGINALS.setdefault(key, original)
    setattr(module, name, value)
    if tag in PATCHES and key not in PATCHES[tag].targets:
        PATCHES[tag].targets.append(key)
    if tag not in APPLIED:
        APPLIED.append(tag)
