"""Run ablation rows: each row is one ordinary training + evaluation run of its project
(``projects/<Name>/train_net.py`` as a subprocess) into ``OUTPUT_ROOT/<method>/<table>/<row>``.

Files of a row folder (besides what the trainer writes there):

* ``run.log``: the subprocess's stdout and stderr (appended by every attempt);
* ``status.json``: ``running`` / ``failed`` (return code, the error line, the log's tail) /
  ``interrupted`` / ``done``;
* ``result.json``: written when the run exited 0: the metrics of every test set, read from the
  ``<dataset>_results.json`` that :class:`~fastreid_plugins.evaluation.VehicleReidEvaluator`
  writes at the final evaluation (nothing is added to the trainer for this), the row's paper
  numbers and the command. A row with a ``result.json`` of the same settings is finished and
  skipped (of other settings: ``conflict``, left alone); a row with a ``last_checkpoint`` and no
  ``result.json`` is resumed (``--resume``), or only evaluated (``--eval-only``) when that
  checkpoint is ``model_final.pth``.

Rows run one after another, or side by side on GPU slots (``gpus`` split into groups of
``gpus_per_row``; each row sees its group as ``CUDA_VISIBLE_DEVICES`` and runs DDP inside with
``--num-gpus`` when a group has more than one GPU, on a free ``--dist-url`` port of its own).
"""

from __future__ import annotations

import glob
import json
import os
import queue
import re
import shlex
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ..errors import ConfigError
from .registry import METRICS, Row, get_method, get_table, table_configs
from .registry import rows as table_rows

__all__ = ["RowJob", "plan", "run_rows", "slots", "subprocess_launcher", "repo_root",
           "row_dir", "read_row_state", "LOG_TAIL_LINES"]

LOG_TAIL_LINES = 40
_ERROR_LINE = re.compile(r"^(Error: .*|[A-Za-z_.]*(Error|Exception|Interrupt)\b.*)$")


def repo_root() -> str:
    """The source checkout holding ``projects/`` and ``configs/`` (this package's parent folder,
    else the current directory)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for cand in (here, os.getcwd()):
        if os.path.isdir(os.path.join(cand, "projects")):
            return cand
    raise ConfigError("cannot find the projects/ folder (projects/<Name>/train_net.py): run from "
                      "a source checkout of fastreid-plugins or pass --repo DIR")


def row_dir(output_root: str, row: Row) -> str:
    return os.path.join(output_root, row.method, row.table, row.row)


@dataclass
class RowJob:
    """One row to run: its folder, the command (without the per-slot parts) and its state."""

    row: object
    out_dir: str
    config_file: str
    opts: List[str]
    resume: bool = False
    eval_only: bool = False
    cmd: List[str] = field(default_factory=list)
    env: Dict[str, str] = field(default_factory=dict)
    slot: Optional[tuple] = None
    status: str = "pending"


def slots(gpus: Optional[Sequence[Union[str, int]]] = None,
          gpus_per_row: int = 1) -> List[Optional[Tuple[str, ...]]]:
    """The GPU groups rows run on: ``[None]`` (one CPU slot: rows one after another) without
    ``gpus``, else ``gpus`` cut into groups of ``gpus_per_row``.

    Raises:
        ConfigError: ``gpus_per_row`` < 1 or not dividing the number of GPUs.
    """
    if gpus_per_row < 1:
        raise ConfigError(f"--gpus-per-row {gpus_per_row}: must be >= 1")
    if not gpus:
        if gpus_per_row != 1:
            raise ConfigError("--gpus-per-row needs --gpus (the GPU ids to share out)")
        return [None]
    gpus = [str(g).strip() for g in gpus if str(g).strip()]
    if len(set(gpus)) != len(gpus):
        raise ConfigError(f"--gpus {','.join(gpus)}: a GPU is listed twice")
    if len(gpus) % gpus_per_row:
        raise ConfigError(f"--gpus {','.join(gpus)} ({len(gpus)} GPUs) cannot be cut into groups "
                          f"of --gpus-per-row {gpus_per_row}")
    return [tuple(gpus[i:i + gpus_per_row]) for i in range(0, len(gpus), gpus_per_row)]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _split_output_dir(opts):
    """``opts`` without an ``OUTPUT_DIR VALUE`` pair, and that value (or None)."""
    opts, out = list(opts), None
    if len(opts) % 2:
        raise ConfigError(f"KEY VALUE overrides come in pairs; got {len(opts)} items: {opts}")
    for i in range(0, len(opts), 2):
        if opts[i] == "OUTPUT_DIR":
            out = opts[i + 1]
    kept = [x for i in range(0, len(opts), 2) if opts[i] != "OUTPUT_DIR" for x in opts[i:i + 2]]
    return kept, out


def plan(method: str, table: str, selected: Optional[Iterable[str]] = None,
         config_file: Optional[str] = None, opts: Sequence[str] = (),
         output_root: Optional[str] = None, repo: Optional[str] = None) -> List[RowJob]:
    """The :class:`RowJob` of every selected row of ``method``/``table``, in the table's order.

    The row's command is ``train_net.py --config-file BASE [--resume] <row overrides> <opts>
    OUTPUT_DIR <row folder>``: the user's ``KEY VALUE`` come after the row's, so they win (e.g.
    ``SOLVER.MAX_EPOCH``); an ``OUTPUT_DIR`` among them is the root of the row folders.
    """
    t = get_table(method, table)
    chosen = table_rows(method, table, selected)
    repo = repo or repo_root()
    opts, out = _split_output_dir(opts)
    root = output_root or out or os.path.join("logs", "reproduce")
    root = root if os.path.isabs(root) else os.path.join(repo, root)
    base = config_file or next(iter(table_configs(t).values()))
    if not os.path.isfile(base if os.path.isabs(base) else os.path.join(repo, base)):
        raise ConfigError(f"--config-file {base!r} not found (relative paths are taken from "
                          f"{repo})")
    jobs = []
    for r in chosen:
        d = row_dir(root, r)
        jobs.append(RowJob(r, d, base, list(opts),
                           resume=os.path.isfile(os.path.join(d, "last_checkpoint"))))
    return jobs


def build_command(job, slot, python=None, repo=None):
    """The argv and environment of ``job`` on ``slot`` (None = CPU / the current devices)."""
    repo = repo or repo_root()
    script = os.path.join(repo, get_method(job.row.method).train_script)
    cmd = [python or sys.executable, script, "--config-file", job.config_file]
    if job.eval_only:
        cmd.append("--eval-only")
    elif job.resume:
        cmd.append("--resume")
    env = {}
    if slot is not None:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(slot)
        if len(slot) > 1:
            cmd += ["--num-gpus", str(len(slot)), "--dist-url", f"tcp://127.0.0.1:{_free_port()}"]
    cmd += list(job.row.overrides) + list(job.opts) + ["OUTPUT_DIR", job.out_dir]
    if job.eval_only:
        cmd += ["MODEL.WEIGHTS", os.path.join(job.out_dir, "model_final.pth")]
    return cmd, env


# ------------------------------------------------------------------------------------------
# the row's files
# ------------------------------------------------------------------------------------------
def _write_json(path, obj):
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2)
    os.replace(tmp, path)


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def read_row_state(out_dir: str) -> Tuple[Optional[Dict[str, Any]], Optional[Dict[str, Any]]]:
    """``(result or None, status or None)`` of a row folder."""
    return (_read_json(os.path.join(out_dir, "result.json")),
            _read_json(os.path.join(out_dir, "status.json")))


def _log_tail(path, n=LOG_TAIL_LINES):
    try:
        with open(path, errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    return [ln[-300:] for ln in lines[-n:]]


def _error_line(lines):
    for ln in reversed(lines):
        if _ERROR_LINE.match(ln.strip()):
            return ln.strip()
    return lines[-1].strip() if lines else ""


def _finished_checkpoint(out_dir):
    name = ""
    try:
        with open(os.path.join(out_dir, "last_checkpoint")) as f:
            name = f.read().strip()
    except OSError:
        pass
    return name == "model_final.pth"


def _collect(job, cmd, wall_s, newer_than=None, since=None):
    """Write ``result.json`` from the evaluator's ``<dataset>_results.json`` (only those written
    after the file ``newer_than`` / the time ``since``, when given); None if there is none."""
    results = {}
    if newer_than and os.path.exists(newer_than):
        since = os.path.getmtime(newer_than)
    for path in sorted(glob.glob(os.path.join(job.out_dir, "*_results.json"))):
        if since is not None and os.path.getmtime(path) < since:
            continue   # an earlier evaluation's (EVAL_PERIOD), not the final one's
        data = _read_json(path)
        if not data:
            continue
        name = data.get("dataset") or os.path.basename(path)[:-len("_results.json")]
        results[name] = {k: data[k] for k in data if k in METRICS or k.endswith("_std")}
        results[name]["protocol"] = data.get("protocol", "")
    if not results:
        return None
    r = job.row
    result = {"key": r.key, "method": r.method, "table": r.table, "row": r.row,
              "label": r.label, "ours": r.ours, "dataset": next(iter(results)),
              "results": results, "paper": r.paper, "overrides": list(r.overrides),
              "opts": job.opts, "config_file": job.config_file, "command": cmd,
              "wall_s": round(wall_s, 1), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_json(os.path.join(job.out_dir, "result.json"), result)
    return result


# ------------------------------------------------------------------------------------------
# launching
# ------------------------------------------------------------------------------------------
class _Children:
    """Process groups of the running rows, so an interrupted runner can end them."""

    def __init__(self):
        self.lock = threading.Lock()
        self.procs = set()

    def add(self, p):
        with self.lock:
            self.procs.add(p)

    def discard(self, p):
        with self.lock:
            self.procs.discard(p)

    def kill_all(self, grace=10.0):
        with self.lock:
            procs = list(self.procs)
        for p in procs:
            _signal_group(p, signal.SIGTERM)
        end = time.time() + grace
        for p in procs:
            try:
                p.wait(max(0.1, end - time.time()))
            except subprocess.TimeoutExpired:
                pass
            _signal_group(p, signal.SIGKILL)
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                pass


def _signal_group(p, sig):
    try:
        os.killpg(p.pid, sig)   # the row's own session: the trainer and any DDP workers
    except (ProcessLookupError, PermissionError):
        pass


CHILDREN = _Children()
#: set when the runner is interrupted: no further row starts, running rows are "interrupted"
STOP = threading.Event()


def subprocess_launcher(cmd: Sequence[str], env: Dict[str, str], log_path: str,
                        timeout: Optional[float] = None,
                        cwd: Optional[str] = None) -> Union[int, str]:
    """Run ``cmd`` in its own session (process group), output appended to ``log_path``; returns
    its exit code (``"timeout"`` after ``timeout`` seconds, the whole group then killed)."""
    full_env = dict(os.environ, **env)
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}\n".encode())
        log.flush()
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                             stdin=subprocess.DEVNULL, start_new_session=True)
        CHILDREN.add(p)
        try:
            return p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _terminate(p)
            return "timeout"
        except BaseException:   # interrupted (Ctrl-C, SIGTERM): end the row's processes first
            _terminate(p)
            raise
        finally:
            _signal_group(p, signal.SIGKILL)   # DDP workers the trainer left behind
            CHILDREN.discard(p)


def _terminate(p, grace=10.0):
    _signal_group(p, signal.SIGTERM)
    try:
        p.wait(grace)
    except subprocess.TimeoutExpired:
        _signal_group(p, signal.SIGKILL)
        p.wait()


def run_one(job, slot, launcher=subprocess_launcher, timeout=None, python=None, repo=None):
    """Run (or skip, or collect) one row; returns its final state: ``skipped`` (finished with the
    same settings), ``conflict`` (finished with other settings: not run, not overwritten),
    ``done``, ``failed``, ``interrupted``."""
    os.makedirs(job.out_dir, exist_ok=True)
    result, _ = read_row_state(job.out_dir)
    if result is not None:
        mine = (job.config_file, list(job.row.overrides), list(job.opts))
        theirs = (result.get("config_file"), result.get("overrides"), result.get("opts"))
        # a finished run of other settings is never reported as this one's
        job.status = "skipped" if mine == theirs else "conflict"
        return job.status
    status_path = os.path.join(job.out_dir, "status.json")
    # trained and evaluated to the end before an interruption: only the result file is missing
    # (FastReID writes model_final.pth before the final evaluation)
    final = os.path.join(job.out_dir, "model_final.pth")
    if _finished_checkpoint(job.out_dir) and _collect(job, [], 0.0, newer_than=final) is not None:
        _write_json(status_path, {"status": "done", "note": "collected from a finished run"})
        job.status = "done"
        return job.status
    job.resume = os.path.isfile(os.path.join(job.out_dir, "last_checkpoint"))
    # trained to the end but killed before its final evaluation wrote the results: evaluate the
    # final checkpoint (--resume of a finished run is an error)
    job.eval_only = _finished_checkpoint(job.out_dir)
    cmd, env = build_command(job, slot, python=python, repo=repo)
    job.cmd, job.env, job.slot = cmd, env, slot
    log_path = os.path.join(job.out_dir, "run.log")
    _write_json(status_path, {"status": "running", "command": cmd, "env": env,
                              "resume": job.resume, "started_at": time.strftime("%H:%M:%S")})
    t0 = time.time()
    try:
        rc = launcher(cmd, env, log_path, timeout=timeout, cwd=repo or repo_root())
    except BaseException as e:  # noqa: B902  (interrupted: recorded, then re-raised)
        _write_json(status_path, {"status": "interrupted", "command": cmd, "env": env,
                                  "error": f"{type(e).__name__}: {e}"})
        raise
    wall = time.time() - t0
    if STOP.is_set():
        _write_json(status_path, {"status": "interrupted", "command": cmd, "env": env,
                                  "returncode": rc, "log_tail": _log_tail(log_path)})
        job.status = "interrupted"
        return job.status
    if rc == 0 and _collect(job, cmd, wall, since=t0 - 1) is not None:
        _write_json(status_path, {"status": "done", "command": cmd, "env": env,
                                  "wall_s": round(wall, 1)})
        job.status = "done"
        return job.status
    tail = _log_tail(log_path)
    if rc == 0:
        error = ("the run exited 0 but wrote no <dataset>_results.json (no evaluation: "
                 "check DATASETS.TESTS)")
    elif rc == "timeout":
        error = f"timed out after {timeout} s (process group killed)"
    else:
        error = _error_line(tail) or f"exit code {rc}"
    _write_json(status_path, {"status": "failed", "returncode": rc, "error": error,
                              "command": cmd, "env": env, "wall_s": round(wall, 1),
                              "log_tail": tail})
    job.status = "failed"
    return job.status


def _progress_bar(n_rows: int) -> Any:
    """The rows' tqdm bar on stderr."""
    from tqdm import tqdm

    return tqdm(total=n_rows, unit="row", file=sys.stderr, dynamic_ncols=True,
                bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} rows "
                           "[{elapsed}<{remaining}{postfix}]")


def _state_line(job: RowJob, state: str) -> str:
    """The line echoed when a row ends: its key and state, with the error of a failed row and
    what to do about a conflicting one."""
    msg = f"{job.row.key}: {state}"
    if state == "failed":
        _, st = read_row_state(job.out_dir)
        msg += f" ({(st or {}).get('error', '')})"
    elif state == "conflict":
        msg += (f" ({job.out_dir} holds a finished run with another config file or "
                "other overrides: delete it or use another --output-dir)")
    return msg


def _run_in_threads(jobs: Sequence[RowJob], n_slots: int, work: Callable[[RowJob], str],
                    errors: List[BaseException], finished: List[threading.Event]) -> None:
    """Run ``work(job)`` for every job on ``n_slots`` worker threads (each takes the next job
    until none is left or :data:`STOP` is set); an exception in ``work`` (a bug) is appended to
    ``errors`` and stops the others. Each thread sets its Event in ``finished`` when it returns
    (waited on with a timeout, not ``Thread.join``: a join interrupted by a signal marks a
    running thread as stopped on Python 3.11)."""
    pending = queue.Queue()
    for job in jobs:
        pending.put(job)

    def work_loop():
        while not STOP.is_set():
            try:
                job = pending.get_nowait()
            except queue.Empty:
                return
            try:
                work(job)
            except BaseException as e:  # noqa: B902  (a bug: stop, re-raised by run_rows)
                errors.append(e)
                STOP.set()

    def worker(done):
        try:
            work_loop()
        finally:
            done.set()

    for _ in range(n_slots):
        finished.append(threading.Event())
        threading.Thread(target=worker, args=(finished[-1],), daemon=True).start()
    for ev in finished:
        while not ev.wait(0.5):
            pass


def run_rows(jobs: Sequence[RowJob], gpus: Optional[Sequence[Union[str, int]]] = None,
             gpus_per_row: int = 1,
             launcher: Callable[..., Union[int, str]] = subprocess_launcher,
             timeout: Optional[float] = None, progress: bool = True,
             python: Optional[str] = None, repo: Optional[str] = None,
             echo: Optional[Callable[[str], Any]] = None) -> Dict[str, str]:
    """Run ``jobs`` on the slots of :func:`slots` (one after another without GPUs); a failing
    row is recorded and the others go on. Returns ``{row key: state}``."""
    STOP.clear()
    free = queue.Queue()
    for s in slots(gpus, gpus_per_row):
        free.put(s)
    n_slots = free.qsize()
    states, lock = {}, threading.Lock()
    bar = _progress_bar(len(jobs)) if progress else None
    errors = []

    def work(job):
        slot = free.get()
        try:
            if bar is not None:
                bar.set_postfix_str(f"{job.row.row}" + (f" on GPU {','.join(slot)}"
                                                        if slot else ""))
            state = run_one(job, slot, launcher=launcher, timeout=timeout, python=python,
                            repo=repo)
        finally:
            free.put(slot)
        with lock:
            states[job.row.key] = state
            if bar is not None:
                bar.update(1)
            if echo is not None:
                (bar.write if bar is not None else echo)(_state_line(job, state))
        return state

    finished = []   # one Event per worker thread, set when it has returned
    try:
        if n_slots == 1:
            for job in jobs:
                if STOP.is_set():
                    break
                work(job)
        else:
            _run_in_threads(jobs, n_slots, work, errors, finished)
    except BaseException:
        STOP.set()             # no new row; the running ones end as "interrupted"
        CHILDREN.kill_all()
        # let the workers record their rows as interrupted (an Event, not Thread.join: a join
        # interrupted by the signal marks a running thread as stopped on Python 3.11)
        for ev in finished:
            ev.wait(15)
        raise
    finally:
        if bar is not None:
            bar.close()
    if errors:
        raise errors[0]
    return states
