"""What :func:`fastreid_plugins.activate` does: check torch and FastReID, apply every patch,
register every method (a module of its own above the methods, so the tools can call it without
importing the package root, which nothing imports)."""

from __future__ import annotations

__all__ = ["activate"]


def activate() -> None:
    """Apply every patch to FastReID and register every method (idempotent; a second call costs
    nothing).

    Raises:
        ImportError: torch or FastReID is not importable by this interpreter (the message names
            the interpreter and how to install the missing one).
    """
    from . import patches

    patches.apply()
    from . import clip_senet, data, mbfn, mfgnet, svrn  # noqa: F401  (register them)
