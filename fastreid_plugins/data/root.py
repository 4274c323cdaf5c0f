"""The datasets root: the folder that holds the dataset folders (``veri/``, ``vehicleid/``, ...).

One accessor and one setter, read by every loader of the package (the train loader of
:mod:`fastreid_plugins.data.train_loader`, the engine's test loaders, the checks and messages of
:mod:`fastreid_plugins.data.validation`, the console header of a run):

* :func:`datasets_root`: ``$FASTREID_DATASETS``, default FastReID's ``"datasets"`` (relative to
  the current folder), read at each call;
* :func:`set_datasets_root`: sets ``$FASTREID_DATASETS`` and FastReID's own copy,
  ``fastreid.data.build._root`` (which FastReID reads from the environment once, at import), so
  FastReID's loaders called directly read the same folder.

This module itself imports neither torch nor FastReID (the setter imports ``fastreid.data.build``
when called).
"""

from __future__ import annotations

import importlib
import os
from typing import Union

__all__ = ["ENV", "DEFAULT", "datasets_root", "set_datasets_root"]

#: the environment variable FastReID reads the datasets root from
ENV = "FASTREID_DATASETS"
#: FastReID's default root (``fastreid.data.build._root`` without ``FASTREID_DATASETS``)
DEFAULT = "datasets"


def datasets_root() -> str:
    """The datasets root: ``$FASTREID_DATASETS``, else ``"datasets"`` (FastReID's default, relative
    to the current folder). Read at each call, so a later :func:`set_datasets_root` (or a change of
    the environment) applies to every loader built afterwards."""
    return os.getenv(ENV, DEFAULT)


def set_datasets_root(path: Union[str, os.PathLike]) -> str:
    """Make ``path`` the datasets root of this process and its child processes.

    Sets ``$FASTREID_DATASETS`` (what :func:`datasets_root` reads, inherited by ``--num-gpus``
    workers) and FastReID's module global ``fastreid.data.build._root`` (through
    :func:`fastreid_plugins.patches.base.set_module_global`, recorded as the ``datasets_root``
    patch), so FastReID's own ``build_reid_train_loader(cfg)`` / ``build_reid_test_loader(cfg,
    name)`` read the same folder.

    Args:
        path: the folder holding the dataset folders; kept as given (a relative path stays
            relative to the current folder, as FastReID reads it).

    Returns:
        str: the root now in use.

    Raises:
        ValueError: ``path`` is empty.
        TypeError: ``path`` is not a string or path-like object.
        AttributeError: FastReID no longer has ``fastreid.data.build._root``.
    """
    root = os.fspath(path)
    if not isinstance(root, str):
        raise TypeError(f"the datasets root must be a str or path-like object, got {path!r}")
    if not root:
        raise ValueError("the datasets root is empty: give the folder that holds the dataset "
                         "folders (e.g. veri/), as FASTREID_DATASETS would.")
    from ..patches.base import set_module_global

    os.environ[ENV] = root
    set_module_global(importlib.import_module("fastreid.data.build"), "_root", root,
                      tag="datasets_root")
    return root
