"""Command-line runner: a user mistake ends in one short block, not a traceback.

:func:`run_cli` runs a command's ``main(argv)``. An error the user can fix
(:class:`~fastreid_plugins.errors.UserError`, and ``FileNotFoundError``: a path given on the
command line or in the config) is printed once to stderr as::

    Error: <what is wrong, naming the file / key / value, and what to do>
    (DatasetNotFoundError; traceback in logs/run/log.txt, or rerun with --debug)

and the process exits with status 2. The traceback goes to the run's log file(s) when the run got
as far as opening one (``OUTPUT_DIR/log.txt``), and to the console only with ``--debug`` (a flag
accepted anywhere on the command line, or ``FASTREID_PLUGINS_DEBUG=1``), which re-raises the
exception unchanged. Any other exception is a bug and keeps its traceback.

Ctrl-C (``KeyboardInterrupt``) ends in one line on stderr and exit status 130, no traceback: a
training run (:class:`fastreid_plugins.checkpoint.TrainingInterrupted`) first writes the checkpoint
of its last finished epoch and the line gives the exact command that resumes it (the same command
with ``--resume``); with ``--debug`` the interrupt keeps its traceback.

Used by :func:`fastreid_plugins.engine.launch_main` (so every ``projects/*/train_net.py``) and by
every ``python -m fastreid_plugins.tools.*``.
"""

import logging
import os
import shlex
import sys
import traceback
from typing import Callable, List, Optional, Sequence, Tuple, Type, TypeVar

from .errors import UserError

__all__ = ["run_cli", "USER_ERRORS", "error_message", "format_error", "log_traceback_to_files",
           "debug_requested", "resume_command", "EXIT_INTERRUPTED"]

#: what :func:`run_cli` prints as a short block (anything else keeps its traceback)
USER_ERRORS = (UserError, FileNotFoundError)

EXIT_USER_ERROR = 2
#: the shell's status of a process ended by SIGINT (128 + 2)
EXIT_INTERRUPTED = 130

_T = TypeVar("_T")


def debug_requested(argv: Sequence[str]) -> Tuple[bool, List[str]]:
    """``(debug, argv without --debug)``: ``--debug`` anywhere in ``argv``, or
    ``FASTREID_PLUGINS_DEBUG=1``."""
    argv = list(argv)
    debug = "--debug" in argv or os.environ.get("FASTREID_PLUGINS_DEBUG", "") not in ("", "0")
    return debug, [a for a in argv if a != "--debug"]


def error_message(exc: BaseException) -> str:
    """The text of ``exc`` for the ``Error:`` line."""
    if isinstance(exc, OSError) and exc.filename and exc.strerror:
        # OSError(errno, strerror, filename), e.g. open(): "No such file or directory: 'x'"
        return f"{exc.strerror}: {exc.filename!r}"
    msg = exc.args[0] if len(exc.args) == 1 and isinstance(exc.args[0], str) else str(exc)
    return msg.strip() or type(exc).__name__


def format_error(exc: BaseException, log_files: Sequence[str] = ()) -> str:
    """The block :func:`run_cli` prints for ``exc`` (a string ending in a newline)."""
    where = (f"traceback in {', '.join(log_files)}, or rerun with --debug" if log_files
             else "rerun with --debug for the traceback")
    return f"Error: {error_message(exc)}\n({type(exc).__name__}; {where})\n"


def _file_handlers():
    """The file handlers of FastReID's and our loggers (``OUTPUT_DIR/log.txt``), one per file."""
    seen, out = set(), []
    for name in ("fastreid_plugins", "fastreid"):
        for h in logging.getLogger(name).handlers:
            stream = getattr(h, "stream", None)
            path = getattr(stream, "name", None)
            if (stream is None or stream in (sys.stdout, sys.stderr) or not isinstance(path, str)
                    or path in seen):
                continue
            seen.add(path)
            out.append((path, stream))
    return out


def log_traceback_to_files(exc: BaseException) -> List[str]:
    """Append ``exc``'s traceback to every open log file of the run; returns their paths."""
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    paths = []
    for path, stream in _file_handlers():
        try:
            stream.write(f"[error] {type(exc).__name__}, the run stopped:\n{text}")
            stream.flush()
            paths.append(path)
        except (OSError, ValueError):  # closed or unwritable: the console block still says it
            pass
    return paths


def resume_command(argv: Sequence[str], datasets: Optional[str] = None) -> str:
    """The command line that reruns this process with ``--resume`` (inserted before the other
    arguments: FastReID's ``opts`` take everything after the first ``KEY``), e.g.
    ``FASTREID_DATASETS=d .venv/bin/python projects/SVRN/train_net.py --resume --config-file ...``.

    Args:
        argv (list[str]): the arguments (without the program).
        datasets (str | None): ``$FASTREID_DATASETS`` as the command was started with.
    """
    exe = sys.executable or "python"
    rel = os.path.relpath(exe)
    py = [rel if not rel.startswith("..") else exe]
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    if spec is not None and spec.name:
        prog = ["-m", spec.name[:-len(".__main__")] if spec.name.endswith(".__main__")
                else spec.name]
    else:
        prog = [os.path.relpath(sys.argv[0])] if sys.argv and sys.argv[0] else []
    env = f"FASTREID_DATASETS={shlex.quote(datasets)} " if datasets else ""
    return env + shlex.join(py + prog + ["--resume"] + [a for a in argv if a != "--resume"])


def _interrupted(exc, argv, datasets):
    """The one line printed after Ctrl-C."""
    msg = getattr(exc, "message", "") or "Interrupted (Ctrl-C)"
    if getattr(exc, "resumable", False):
        return f"{msg}; resume with: {resume_command(argv, datasets)}\n"
    return msg + "\n"


def run_cli(main_fn: Callable[[List[str]], _T], argv: Optional[Sequence[str]] = None,
            errors: Tuple[Type[BaseException], ...] = USER_ERRORS) -> _T:
    """Run ``main_fn(argv)``; a user error prints one short block to stderr and exits 2.

    Args:
        main_fn (callable): takes the argument list (``--debug`` removed).
        argv (list[str] | None): default ``sys.argv[1:]``.
        errors (tuple[type]): the exception types printed as a short block.

    Returns:
        whatever ``main_fn`` returns.

    Raises:
        SystemExit: status 2 after a user error, 130 after Ctrl-C (without ``--debug``).
    """
    debug, argv = debug_requested(sys.argv[1:] if argv is None else argv)
    # faiss's loader logs at INFO which CPU build it tried (up to 8 lines with "could not load
    # ..."): routine, kept off every command's console, whichever module imports faiss first
    logging.getLogger("faiss.loader").setLevel(logging.WARNING)
    if debug:  # seen by engine.setup (full console log) and by launch workers
        os.environ["FASTREID_PLUGINS_DEBUG"] = "1"
    datasets = os.environ.get("FASTREID_DATASETS")  # as started: main_fn may change it
    try:
        return main_fn(argv)
    except KeyboardInterrupt as e:
        if debug:
            raise
        sys.stdout.flush()
        sys.stderr.write(_interrupted(e, argv, datasets))
        sys.stderr.flush()
        raise SystemExit(EXIT_INTERRUPTED) from None
    except errors as e:
        if debug:
            raise
        files = log_traceback_to_files(e)
        sys.stdout.flush()
        sys.stderr.write(format_error(e, files))
        sys.stderr.flush()
        raise SystemExit(EXIT_USER_ERROR) from None
