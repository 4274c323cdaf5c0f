"""Shared pytest fixtures.

The suite also runs with a FastReID git checkout first on ``PYTHONPATH`` (its ``tests`` package
would shadow ours: :func:`_own_tests_package`).

Tests that need the real VeRi-776 sample use the ``veri_root`` fixture: it skips when
``../shared/datasets`` (or ``$FASTREID_DATASETS``) is absent, and fails instead when
``REQUIRE_SHARED_DATA=1`` (set by CI), so CI can never pass by skipping them.
"""

import atexit
import os
import shutil
import sys
import tempfile
import types

import pytest

# Tests never download and never see the user's caches: offline (fastreid_plugins.modeling.
# pretrained.is_offline) and a private, empty TORCH_HOME; download tests switch these per test.
os.environ["FASTREID_PLUGINS_OFFLINE"] = "1"
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="fastreid_plugins_torch_home_")
atexit.register(shutil.rmtree, os.environ["TORCH_HOME"], True)

# after the environment above: the package reads it when activated
import torch  # noqa: E402

import fastreid_plugins  # noqa: E402

# the tests use FastReID as train_net.py and the tools do: patched, every method registered
# (tests of what importing alone does run in subprocesses: tests/test_front_door.py)
fastreid_plugins.activate()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS_DIR = os.path.join(ROOT, "tests")
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)


def _own_tests_package():
    """Make ``import tests.helpers`` find this folder even when another ``tests`` package comes
    first on ``sys.path``: a FastReID git checkout on ``PYTHONPATH`` (as the README offers) has a
    regular ``tests/__init__.py``, which Python prefers to this ``__init__``-less folder wherever
    it stands on the path. Test modules import their helpers as ``helpers`` or ``tests.helpers``.
    """
    mod = sys.modules.get("tests")
    if mod is not None and TESTS_DIR in [os.path.abspath(p) for p in getattr(mod, "__path__", [])]:
        return
    pkg = types.ModuleType("tests")
    pkg.__path__ = [TESTS_DIR]
    pkg.__file__ = None
    sys.modules["tests"] = pkg
    for name in [m for m in sys.modules if m.startswith("tests.")]:
        del sys.modules[name]  # submodules of the other package


_own_tests_package()

# FASTREID_PLUGINS_THREADS=1 keeps tests fast when other jobs load the machine
torch.set_num_threads(int(os.environ.get("FASTREID_PLUGINS_THREADS",
                                         max(1, min(2, os.cpu_count() or 1)))))


def shared_datasets_dir():
    cand = os.environ.get("FASTREID_DATASETS") or os.path.join(ROOT, "..", "shared", "datasets")
    return os.path.abspath(cand)


@pytest.fixture(scope="session")
def veri_root():
    """Directory holding ``veri/`` (the real 57-image VeRi-776 sample)."""
    root = shared_datasets_dir()
    if not os.path.isdir(os.path.join(root, "veri", "image_query")):
        msg = f"real VeRi sample not found under {root}"
        if os.environ.get("REQUIRE_SHARED_DATA") == "1":
            pytest.fail(msg + " (REQUIRE_SHARED_DATA=1)")
        pytest.skip(msg)
    return root


@pytest.fixture
def datasets_root(monkeypatch):
    """Point the loaders at a root for one test: ``datasets_root(path)`` sets what
    ``fastreid_plugins.data.set_datasets_root`` sets (``$FASTREID_DATASETS``, read by
    ``fastreid_plugins.data.datasets_root()``, and FastReID's ``fastreid.data.build._root``),
    undone after the test."""
    import fastreid.data.build as db

    def _set(path):
        monkeypatch.setattr(db, "_root", path)
        monkeypatch.setenv("FASTREID_DATASETS", path)
        return path
    return _set
