"""fastreid-plugins: vehicle re-identification methods as drop-in FastReID projects.

Importing this package

1. checks that FastReID is importable (PyPI ``fastreid==1.4.0`` or a git checkout on ``PYTHONPATH``)
   and otherwise raises an :class:`ImportError` that says how to get it;
2. applies :mod:`fastreid_plugins.patches` once (every change to FastReID: Python 3.11 / torch 2.x /
   CPU fixes, strict weights, DDP on gloo, dataset validation; ``python -m
   fastreid_plugins.patches`` lists them);
3. registers the plugins' datasets, backbones, heads and meta-architectures in FastReID's registries.

Layers (``tests/test_layers.py`` keeps them): :mod:`~fastreid_plugins.errors`,
:mod:`~fastreid_plugins.patches.base` (leaves) < core (config, checkpoint, seeding, distributed, data,
evaluation, modeling, layers, losses, engine) < :mod:`~fastreid_plugins.patches` < the methods
(mfgnet, mbfn, svrn, clip_senet) < tools.
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

try:
    import fastreid  # noqa: F401
except ImportError as e:  # pragma: no cover - exercised in a subprocess test
    raise ImportError(_INSTALL_HINT) from e

from . import patches  # noqa: E402

patches.apply()

from . import config, data, evaluation, layers, losses, modeling  # noqa: E402,F401
from . import clip_senet, mbfn, mfgnet, svrn  # noqa: E402  (register the methods)

#: every method's :class:`~fastreid_plugins.method.Method`, by meta-architecture name
METHODS = {m.METHOD.meta_arch: m.METHOD for m in (mfgnet, mbfn, svrn, clip_senet)}
