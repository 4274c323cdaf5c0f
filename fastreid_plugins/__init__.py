"""fastreid-plugins: vehicle re-identification methods as drop-in FastReID projects.

Importing this package

1. checks that torch, then FastReID, is importable (PyPI ``fastreid==1.4.0`` or a git checkout on
   ``PYTHONPATH``) and otherwise raises an :class:`ImportError` naming the missing one, the
   interpreter that runs (``sys.executable``) and how to get it;
2. applies :mod:`fastreid_plugins.patches` once (every change to FastReID: Python 3.11 / torch
   2.x / CPU fixes, strict weights, DDP on gloo, dataset validation; ``python -m
   fastreid_plugins.patches`` lists them);
3. registers the plugins' datasets, backbones, heads and meta-architectures in FastReID's
   registries.

Layers (``tests/test_layers.py`` keeps them): :mod:`~fastreid_plugins.errors`,
:mod:`~fastreid_plugins.patches.base` (leaves) < core (config, checkpoint, seeding, distributed,
data, evaluation, modeling, layers, losses, engine) < :mod:`~fastreid_plugins.patches` < the
methods (mfgnet, mbfn, svrn, clip_senet) < tools.

In the process of ``python -m fastreid_plugins.reproduce`` (:func:`_reproduce_command`)
nothing of this is done: that command needs none of it.
"""

__version__ = "0.1.0"


def _missing(what, exc):
    """The ImportError for a missing dependency: which interpreter runs, and how to fix it."""
    import sys

    venv = "(`make test` / `make demo` build .venv; then `source .venv/bin/activate`, or run "
    venv += "`.venv/bin/python ...`.)"
    if what == "torch":
        body = ("fastreid_plugins needs PyTorch, which is not importable by this interpreter:\n"
                f"    {sys.executable}\n"
                "Use the interpreter of the environment you installed into, e.g. "
                "`source .venv/bin/activate`,\nor install it: pip install torch torchvision\n")
    else:
        body = ("fastreid_plugins needs FastReID, which is not importable by this interpreter:\n"
                f"    {sys.executable}\n"
                "Install it without its (torch 1.13-pinned) dependencies:\n"
                "    pip install --no-deps fastreid==1.4.0\n"
                "or point Python at a FastReID git checkout:\n"
                "    export PYTHONPATH=/path/to/fast-reid:$PYTHONPATH\n")
    return ImportError(body + venv + f"\n(import error: {exc})")


def _reproduce_command():
    """True in the process of ``python -m fastreid_plugins.reproduce``: that command only reads
    the ablation registry and starts the projects' ``train_net.py`` as subprocesses, so it skips
    importing FastReID / torch here (``list`` answers in well under a second)."""
    import sys
    argv = list(getattr(sys, "orig_argv", []))
    for i, a in enumerate(argv):
        if a == "-m":
            return argv[i + 1:i + 2] == ["fastreid_plugins.reproduce"]
        if a.startswith("-m"):
            return a[2:] == "fastreid_plugins.reproduce"
    return False


if not _reproduce_command():
    # torch first: without it FastReID fails to import too, and "install FastReID" would be wrong
    try:
        import torch  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised in a subprocess test
        raise _missing("torch", e) from None
    try:
        import fastreid  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised in a subprocess test
        if getattr(e, "name", None) == "torch" or str(e).startswith("No module named 'torch"):
            raise _missing("torch", e) from None
        raise _missing("fastreid", e) from None

    from . import patches  # noqa: E402

    patches.apply()

    from . import config, data, evaluation, layers, losses, modeling  # noqa: E402,F401
    from . import clip_senet, mbfn, mfgnet, svrn  # noqa: E402,F401  (register the methods)

#: every method's record (:class:`~fastreid_plugins.method.Method`), by key
from .method import METHODS  # noqa: E402,F401
