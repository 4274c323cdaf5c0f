"""fastreid-plugins: vehicle re-identification methods as drop-in FastReID projects.

Importing this package does nothing: no torch, no FastReID, no change to FastReID. FastReID is
patched and the methods registered only when asked:

* :func:`activate` (idempotent): apply every patch of :mod:`fastreid_plugins.patches` and register
  every method's meta-architecture, backbones and datasets in FastReID's registries;
* ``import fastreid_plugins.svrn`` (FastReID's own project idiom, any method package): apply the
  patches and register that method (and the plugins' datasets);
* ``projects/*/train_net.py`` (:func:`fastreid_plugins.engine.launch_main`) and the command-line
  tools (``python -m fastreid_plugins.tools.<name>``) activate for the user, and the run's log
  names the active patches.

``python -m fastreid_plugins.patches`` lists every patch and whether it is active in that process
(``--activate`` first activates, to show what applies on this host).

Layers (``tests/test_layers.py`` keeps them, this module included): leaves (errors, version,
upstream, patches.base, patches.compat) < core (config, method, checkpoint, seeding, distributed,
data, evaluation, modeling, layers, losses, the paper tables) < patches < engine < methods (mfgnet,
mbfn, svrn, clip_senet) < tools, reproduce, activation < this package (and the ``__main__``
programs).
"""

from .method import METHODS  # every method's record (torch-free), by key: "svrn", ...
from .version import __version__

__all__ = ["__version__", "METHODS", "activate"]


def activate() -> None:
    """Apply every patch to FastReID and register every method (idempotent; a second call costs
    nothing). See :func:`fastreid_plugins.activation.activate`.

    Raises:
        ImportError: torch or FastReID is not importable by this interpreter (the message names
            the interpreter and how to install the missing one).
    """
    from .activation import activate as _activate

    _activate()
