"""fastreid-plugins: vehicle re-identification methods as drop-in FastReID projects.

Importing this package

1. checks that FastReID is importable (PyPI ``fastreid==1.4.0`` or a git checkout on ``PYTHONPATH``)
   and otherwise raises an :class:`ImportError` that says how to get it;
2. applies :mod:`fastreid_plugins.compat` once (Python 3.11 / torch 2.x / CPU fixes);
3. registers the plugins' datasets, backbones, heads and meta-architectures in FastReID's registries.

except in the process of ``python -m fastreid_plugins.reproduce`` (:func:`_reproduce_command`),
which needs none of it.
"""

__version__ = "0.1.0"

_INSTALL_HINT = (
    "fastreid_plugins needs FastReID, which is not importable in this environment.\n"
    "Install it without its (torch 1.13-pinned) dependencies:\n"
    "    pip install --no-deps fastreid==1.4.0\n"
    "or point Python at a FastReID git checkout:\n"
    "    export PYTHONPATH=/path/to/fast-reid:$PYTHONPATH\n"
    "(`make test` / `make demo` in this repository do the former for you in .venv)."
)



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
    try:
        import fastreid  # noqa: F401
    except ImportError as e:  # pragma: no cover - exercised in a subprocess test
        raise ImportError(_INSTALL_HINT) from e

    from . import compat

    compat.apply()

    from . import config, data, evaluation, layers, losses, modeling  # noqa: F401
    from . import clip_senet, mbfn, mfgnet, svrn  # noqa: F401  (register the methods)
