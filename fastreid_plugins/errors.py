"""Every exception the package raises on purpose, in one place.

A leaf module: it imports nothing else of the package, so any layer may raise these.

:class:`UserError` is the family of mistakes a user can fix (a path, a config key, a file that is
not what it should be). The command-line tools print a ``UserError`` as one short block (what is
wrong, the file / key / value, what to do) and keep the traceback for ``--debug`` and the log file;
anything else is a bug and keeps its traceback. Each class also derives from the builtin type the
code raised before (``FileNotFoundError``, ``ValueError``, ``RuntimeError``, ...), so existing
``except`` clauses keep working.

=============================  ==========================================================
class                          raised when
=============================  ==========================================================
:class:`ConfigError`           a config value / key is invalid for the method or the host
:class:`MissingConfigError`    a method's config node is missing (``add_<method>_config``)
:class:`ConfigFileNotFoundError`  ``--config-file`` does not exist
:class:`UnknownAblationError`  ``reproduce`` / the paper tables: unknown method, table or row
:class:`DatasetNotFoundError`  a dataset's folder or list file is missing
:class:`DatasetError`          a dataset is readable but unusable (bad labels, too few ids)
:class:`ImageReadError`        an image exists but cannot be decoded
:class:`CorruptCheckpointError`  a checkpoint is empty, truncated or not a checkpoint at all
:class:`CheckpointUnpicklingError`  a checkpoint holds pickled objects torch refuses to load
:class:`WeightsMismatchError`  a checkpoint / weights file does not fit the model
:class:`WeightsNotAvailableError`  pretrained weights missing and not downloadable
:class:`SEMWeightsError`       CLIP-SENet's TinyCLIP weights are in an unsupported format
:class:`NonFiniteCheckpointError`  a state to save holds inf / NaN (training diverged)
:class:`TrainingFinishedError`  ``--resume`` on a run that already finished
:class:`UpstreamChangedError`  (not a user error) a private FastReID / torch internal is gone
=============================  ==========================================================
"""

from __future__ import annotations

__all__ = [
    "missing_dependency",
    "UserError",
    "ConfigError",
    "MissingConfigError",
    "ConfigFileNotFoundError",
    "UnknownAblationError",
    "DatasetNotFoundError",
    "DatasetError",
    "ImageReadError",
    "CorruptCheckpointError",
    "CheckpointUnpicklingError",
    "WeightsMismatchError",
    "WeightsNotAvailableError",
    "SEMWeightsError",
    "NonFiniteCheckpointError",
    "TrainingFinishedError",
    "UpstreamChangedError",
]


class UserError(Exception):
    """A mistake the user can fix; the message names the file, key or value and what to do.

    Command-line tools print ``Error: <message>`` (no traceback unless ``--debug``) and exit 2.
    """


class ConfigError(UserError, ValueError):
    """A config key or value is invalid (unknown key, value out of range, combination the
    method does not support). The message names the key (``MODEL.MBFN.LOCAL1.NUM_PARTS``)."""


class MissingConfigError(ConfigError, KeyError):
    """A config node a method needs is missing (``MODEL.SVRN``: ``add_svrn_config`` was not
    applied). Also a ``KeyError``; its message is not quoted like a ``KeyError``'s."""

    def __str__(self) -> str:
        return Exception.__str__(self)


class ConfigFileNotFoundError(ConfigError, FileNotFoundError):
    """``--config-file`` names a file that does not exist."""


class UnknownAblationError(ConfigError, KeyError):
    """An unknown method, table or row of the paper tables (``reproduce``); the message lists
    the known ones. Also a ``KeyError``; its message is not quoted like a ``KeyError``'s."""

    def __str__(self) -> str:
        return Exception.__str__(self)


class DatasetNotFoundError(UserError, FileNotFoundError, RuntimeError):
    """A dataset's folder or list file is missing. Also a ``RuntimeError`` (FastReID's type)."""


class DatasetError(UserError, ValueError):
    """A dataset is found but cannot be used as configured (labels, sizes, sampler needs)."""


class ImageReadError(UserError, OSError):
    """An image file exists but cannot be decoded (corrupt, truncated, not an image)."""


class CorruptCheckpointError(UserError, RuntimeError):
    """A checkpoint file is empty, truncated (e.g. a write that was killed) or not a torch
    checkpoint at all (a text file, a zip without ``data.pkl``, a pickle of another type)."""


class CheckpointUnpicklingError(UserError, RuntimeError):
    """A checkpoint holds pickled Python objects that ``torch.load(weights_only=True)`` refuses."""


class WeightsMismatchError(UserError, ValueError, RuntimeError):
    """A checkpoint (``MODEL.WEIGHTS``) or pretrained weights file does not fit the model
    (missing / unexpected / mis-shaped keys). The message names the file and lists the keys."""


class WeightsNotAvailableError(UserError, FileNotFoundError):
    """Pretrained weights are not there and could not be fetched (missing path, offline,
    download failed or corrupt). The message names the file, URL, cache folder and config key."""


class SEMWeightsError(WeightsMismatchError):
    """CLIP-SENet's SEM (TinyCLIP) weights are in an unsupported format or do not match the
    configured encoder."""


class NonFiniteCheckpointError(UserError, FloatingPointError):
    """A model / optimizer state holds inf or NaN (training diverged)."""


class TrainingFinishedError(UserError, ValueError):
    """``--resume`` on a run whose last checkpoint is already its final iteration."""


class UpstreamChangedError(RuntimeError):
    """A private FastReID / torch internal the package relies on is gone (a bug here, not a user
    mistake): the message names the internal and the versions the shim was written for
    (:mod:`fastreid_plugins.upstream`)."""


def missing_dependency(what: str, exc: BaseException) -> ImportError:
    """The ImportError for a missing torch or FastReID: which interpreter runs, and how to fix it.

    Args:
        what: ``"torch"`` or ``"fastreid"``.
        exc: the original import error (quoted at the end of the message).
    """
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
