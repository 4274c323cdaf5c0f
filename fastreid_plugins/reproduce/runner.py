"""Run ablation rows: each row is one ordinary training + evaluation run of its project
(``projects/<Name>/train_net.py`` as a subprocess) into its own folder,
``OUTPUT_ROOT/<method>/<table>/<row>/<config>[-seed<N>]-<hash>``: the hash is of what defines the
run (the normalised config path, the row's overrides, the user's ``KEY VALUE``, the seed), so a
run with another config, other overrides or another seed never shares a folder.

Files of a row folder (besides what the trainer writes there):

* ``row.json``: the run's settings and every command run in the folder (a list);
* ``runner.lock``: an ``flock`` held while a runner works on the row, the file naming its pid,
  host and start time: a second runner is refused with an error naming the pid; the kernel drops
  the lock when its runner dies (however it dies), so a dead runner's lock is free;
* ``run.log``: the subprocess's stdout and stderr (appended by every attempt);
* ``status.json``: ``running`` (with the runner's pid: a dead pid reads ``interrupted``) /
  ``failed`` (return code, the error line, the log's tail) / ``interrupted`` / ``done``;
* ``result.json``: written when the run exited 0: the metrics of every test set, read from the
  ``<dataset>_results.json`` that :class:`~fastreid_plugins.evaluation.VehicleReidEvaluator`
  writes at the final evaluation (nothing is added to the trainer for this), the row's paper
  numbers, the settings, every command and how the row ran (:func:`provenance`).

What ``run`` does with a row is :func:`decide` (``run --dry-run`` prints the same):
``skip`` (finished, same settings), ``conflict`` (finished with other settings: left alone),
``mismatch`` (unfinished, made by another command: an error naming the difference; ``--restart``
starts it over), ``locked`` (another runner holds it), ``collect`` (trained and evaluated, only
``result.json`` missing), ``eval-only`` (``model_final.pth`` without results), ``resume``
(a ``last_checkpoint``), ``start``, ``restart`` (``--restart``: the folder emptied first).

Rows run one after another, or side by side on GPU slots (``gpus`` split into groups of
``gpus_per_row``; each row sees its group as ``CUDA_VISIBLE_DEVICES`` and runs DDP inside with
``--num-gpus`` when a group has more than one GPU, on a free ``--dist-url`` port of its own).
Each trainer dies with the runner (Linux: ``PR_SET_PDEATHSIG``), even when the runner is
SIGKILLed.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import queue
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from ..config import get_key
from ..errors import ConfigError
from .registry import METRICS, Row, get_method, get_table, table_configs
from .registry import rows as table_rows

__all__ = ["RowJob", "plan", "run_rows", "slots", "subprocess_launcher", "repo_root",
           "row_dir", "run_dirs", "read_row_state", "row_state", "decide", "describe",
           "normalise_config", "settings_of", "provenance", "LOG_TAIL_LINES", "ACTIONS"]

LOG_TAIL_LINES = 40
_ERROR_LINE = re.compile(r"^(Error: .*|[A-Za-z_.]*(Error|Exception|Interrupt)\b.*)$")
LOCK_FILE = "runner.lock"
#: what :func:`decide` may answer, and the state a row ends in after ``run`` (launched rows end
#: ``done`` / ``failed`` / ``interrupted``)
ACTIONS = {"skip": "skipped", "conflict": "conflict", "mismatch": "mismatch", "locked": "locked",
           "collect": "done", "eval-only": None, "resume": None, "start": None, "restart": None}


def repo_root() -> str:
    """The source checkout holding ``projects/`` and ``configs/`` (this package's parent folder,
    else the current directory)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    for cand in (here, os.getcwd()):
        if os.path.isdir(os.path.join(cand, "projects")):
            return cand
    raise ConfigError("cannot find the projects/ folder (projects/<Name>/train_net.py): run from "
                      "a source checkout of fastreid-plugins or pass --repo DIR")


def normalise_config(path: str, repo: Optional[str] = None) -> str:
    """``path`` (relative to ``repo`` or absolute) as one spelling: the real path, relative to the
    repository when inside it (``./configs/x.yml``, ``/abs/repo/configs/x.yml`` ->
    ``configs/x.yml``).

    Raises:
        ConfigError: no such file.
    """
    repo = os.path.realpath(repo or repo_root())
    full = os.path.realpath(path if os.path.isabs(path) else os.path.join(repo, path))
    if not os.path.isfile(full):
        raise ConfigError(f"--config-file {path!r} not found (relative paths are taken from "
                          f"{repo})")
    rel = os.path.relpath(full, repo)
    return full if rel.startswith("..") else rel


def settings_of(row: Row, config_file: str, opts: Sequence[str],
                seed: Optional[int]) -> Dict[str, Any]:
    """What defines a row's run (and its folder): the normalised config, the row's overrides,
    the user's ``KEY VALUE`` and the seed (None: the config's ``SEED``)."""
    return {"key": row.key, "config_file": config_file, "overrides": list(row.overrides),
            "opts": list(opts), "seed": seed}


def _settings_hash(settings):
    blob = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def _prefix(settings):
    cfg = os.path.splitext(settings["config_file"])[0].replace("\\", "/").split("/")
    name = "-".join(cfg[-2:])
    return name + ("" if settings["seed"] is None else f"-seed{settings['seed']}")


def row_dir(output_root: str, row: Row, settings: Optional[Dict[str, Any]] = None) -> str:
    """The row's folder: ``OUTPUT_ROOT/<method>/<table>/<row>`` (its runs' parent), or, with
    ``settings`` (:func:`settings_of`), the run's own folder under it,
    ``<config>[-seed<N>]-<10 hex digits of SHA-256 of the settings>``."""
    d = os.path.join(output_root, row.method, row.table, row.row)
    if settings is None:
        return d
    return os.path.join(d, f"{_prefix(settings)}-{_settings_hash(settings)}")


def run_dirs(output_root: str, row: Row) -> List[str]:
    """The run folders of ``row`` under ``output_root`` (those holding a ``row.json``,
    ``status.json`` or ``result.json``), sorted."""
    base = row_dir(output_root, row)
    found = []
    for d in sorted(glob.glob(os.path.join(glob.escape(base), "*", ""))):
        if any(os.path.exists(os.path.join(d, f))
               for f in ("row.json", "status.json", "result.json")):
            found.append(d.rstrip(os.sep))
    return found


@dataclass
class RowJob:
    """One row to run on one config and seed: its folder, settings, command and state."""

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
    seed: Optional[int] = None
    settings: Dict[str, Any] = field(default_factory=dict)
    name: str = ""
    detail: str = ""

    def __post_init__(self):
        if not self.settings:
            self.settings = settings_of(self.row, self.config_file, self.opts, self.seed)
        if not self.name:
            self.name = self.row.key

    @property
    def run_opts(self) -> List[str]:
        """The user's ``KEY VALUE`` and the seed's ``SEED N``, as passed to the trainer."""
        return list(self.opts) + ([] if self.seed is None else ["SEED", str(self.seed)])


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


def _configs_to_run(t, config_file, dataset, repo):
    configs = table_configs(t)
    if config_file and dataset:
        raise ConfigError("--config-file and --dataset both name the config: give one")
    if config_file:
        return [normalise_config(config_file, repo)]
    if dataset:
        if dataset not in configs:
            raise ConfigError(f"--dataset {dataset!r}: {t.key} reports {list(configs)}")
        return [normalise_config(configs[dataset], repo)]
    chosen = list(configs.values()) if t.per_dataset else [next(iter(configs.values()))]
    return [normalise_config(c, repo) for c in chosen]


def plan(method: str, table: str, selected: Optional[Iterable[str]] = None,
         config_file: Optional[str] = None, opts: Sequence[str] = (),
         output_root: Optional[str] = None, repo: Optional[str] = None,
         seeds: Optional[Sequence[int]] = None, dataset: Optional[str] = None) -> List[RowJob]:
    """The :class:`RowJob` of every selected row of ``method``/``table`` on each config and seed,
    in the table's order.

    Configs: ``config_file``, else the paper config of ``dataset``, else every dataset's paper
    config of a per-dataset table (``<method>/main``), else the table's first. Seeds: one run per
    seed (``SEED N`` after the user's overrides), or one run with the config's ``SEED``.

    The row's command is ``train_net.py --config-file BASE [--resume] <row overrides> <opts>
    [SEED N] OUTPUT_DIR <run folder>``: the user's ``KEY VALUE`` come after the row's, so they win
    (e.g. ``SOLVER.MAX_EPOCH``); an ``OUTPUT_DIR`` among them is the root of the row folders.

    Raises:
        ConfigError: unknown dataset, missing config, odd ``KEY VALUE`` list, ``SEED`` among
            ``opts`` together with ``seeds``, a repeated seed.
    """
    t = get_table(method, table)
    chosen = table_rows(method, table, selected)
    repo = repo or repo_root()
    opts, out = _split_output_dir(opts)
    root = output_root or out or os.path.join("logs", "reproduce")
    root = root if os.path.isabs(root) else os.path.join(repo, root)
    seeds = list(seeds) if seeds else [None]
    if seeds != [None] and "SEED" in opts[::2]:
        raise ConfigError("SEED is among the KEY VALUE overrides and --seeds is given: use one")
    if len(set(seeds)) != len(seeds):
        raise ConfigError(f"--seeds {seeds}: a seed is listed twice")
    configs = _configs_to_run(t, config_file, dataset, repo)
    jobs = []
    for r in chosen:
        for cfg in configs:
            for seed in seeds:
                st = settings_of(r, cfg, opts, seed)
                name = r.key if len(configs) * len(seeds) == 1 else f"{r.key} [{_prefix(st)}]"
                jobs.append(RowJob(r, row_dir(root, r, st), cfg, list(opts), seed=seed,
                                   settings=st, name=name))
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
    cmd += list(job.row.overrides) + job.run_opts + ["OUTPUT_DIR", job.out_dir]
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
    """``(result or None, status or None)`` of a run folder."""
    return (_read_json(os.path.join(out_dir, "result.json")),
            _read_json(os.path.join(out_dir, "status.json")))


def _pid_alive(pid, host):
    if host and host != socket.gethostname():
        return True   # another host's process: cannot tell, assume it runs
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True
    return True


def row_state(out_dir: str) -> str:
    """The run folder's state as the report shows it: ``done``, ``not run``, ``failed: <error>``,
    ``interrupted`` (also a ``running`` status whose runner pid is dead), ``running``."""
    result, status = read_row_state(out_dir)
    if result is not None:
        return "done"
    if status is None:
        return "not run"
    st = status.get("status", "?")
    if st == "failed":
        return f"failed: {status.get('error', '')}"
    if st == "running" and not _pid_alive(status.get("pid", -1), status.get("host")):
        return f"interrupted (its runner, pid {status.get('pid')}, is gone)"
    return st


def _read_lock(out_dir):
    return _read_json(os.path.join(out_dir, LOCK_FILE))


#: ``{run folder: fd}`` of the locks this process holds
_HELD: Dict[str, int] = {}


def _try_flock(path):
    """An fd holding an exclusive ``flock`` of ``path`` (created if missing), or None when
    another process holds it."""
    import fcntl

    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)   # not inherited by the trainer
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _unknown_lock():
    return {"pid": "?", "host": "?", "started_at": "?"}


def _live_lock(out_dir):
    """The lock of another live runner on the folder (its pid, host, start time), or None. The
    lock is an ``flock`` of ``runner.lock``: the kernel drops it when its runner dies, however
    it dies, so a lock file left by a dead runner is free."""
    path = os.path.join(out_dir, LOCK_FILE)
    if out_dir in _HELD or not os.path.exists(path):
        return None
    fd = _try_flock(path)
    if fd is None:
        return _read_lock(out_dir) or _unknown_lock()
    os.close(fd)
    return None


def _lock_text(lock):
    return (f"another runner holds it: pid {lock.get('pid')} on {lock.get('host')}, since "
            f"{lock.get('started_at')} ({LOCK_FILE})")


def _acquire_lock(out_dir):
    """Take the folder's lock (and write pid, host, start time into it); returns None, or the
    lock of the live runner that holds it."""
    fd = _try_flock(os.path.join(out_dir, LOCK_FILE))
    if fd is None:
        return _read_lock(out_dir) or _unknown_lock()
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")}).encode())
    _HELD[out_dir] = fd
    return None


def _release_lock(out_dir):
    """Empty the lock file and drop the lock (the file stays: removing it would let a runner
    that opened it before lock the removed file while a third one locks a new file)."""
    fd = _HELD.pop(out_dir, None)
    if fd is not None:
        os.ftruncate(fd, 0)
        os.close(fd)


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


def _results(out_dir, newer_than=None, since=None):
    """``{test set: metrics}`` of the evaluator's ``<dataset>_results.json`` in ``out_dir`` (only
    those written after the file ``newer_than`` / the time ``since``, when given)."""
    results = {}
    if newer_than and os.path.exists(newer_than):
        since = os.path.getmtime(newer_than)
    for path in sorted(glob.glob(os.path.join(glob.escape(out_dir), "*_results.json"))):
        if since is not None and os.path.getmtime(path) < since:
            continue   # an earlier evaluation's (EVAL_PERIOD), not the final one's
        data = _read_json(path)
        if not data:
            continue
        name = data.get("dataset") or os.path.basename(path)[:-len("_results.json")]
        results[name] = {k: data[k] for k in data if k in METRICS or k.endswith("_std")}
        results[name]["protocol"] = data.get("protocol", "")
    return results


def _differences(mine, theirs):
    """``"opts: [...] here, [...] there; ..."`` for every setting that differs."""
    parts = []
    for k in ("config_file", "overrides", "opts", "seed"):
        a, b = mine.get(k), (theirs or {}).get(k)
        if a != b:
            parts.append(f"{k}: {a!r} now, {b!r} in the folder")
    return "; ".join(parts) or "none"


def _recorded_settings(out_dir):
    info = _read_json(os.path.join(out_dir, "row.json")) or {}
    return info.get("settings")


def decide(job: RowJob, restart: bool = False) -> Tuple[str, str]:
    """What ``run`` does with ``job``'s folder now: ``(action, detail)``, the action one of
    :data:`ACTIONS` (see the module docstring), the detail a sentence for the user. Reads only;
    ``run`` and ``run --dry-run`` both ask this."""
    d = job.out_dir
    lock = _live_lock(d) if os.path.isdir(d) else None
    if lock is not None:
        return "locked", _lock_text(lock)
    if restart and os.path.isdir(d) and os.listdir(d):
        return "restart", f"--restart: {d} is emptied and the row runs from scratch"
    result, _ = read_row_state(d)
    if result is not None:
        theirs = result.get("settings") or {
            "config_file": result.get("config_file"), "overrides": result.get("overrides"),
            "opts": result.get("opts"), "seed": None}
        if all(theirs.get(k) == job.settings[k] for k in ("config_file", "overrides", "opts",
                                                          "seed")):
            return "skip", f"finished ({d}/result.json)"
        return "conflict", (f"{d} holds a finished run of other settings ("
                            f"{_differences(job.settings, theirs)}): left alone; --restart "
                            "runs it again from scratch")
    recorded = _recorded_settings(d)
    if recorded is not None and any(recorded.get(k) != job.settings[k]
                                    for k in ("config_file", "overrides", "opts", "seed")):
        return "mismatch", (f"{d} holds an unfinished run of another command ("
                            f"{_differences(job.settings, recorded)}): not resumed; --restart "
                            "starts it over")
    final = os.path.join(d, "model_final.pth")
    if _finished_checkpoint(d):
        if _results(d, newer_than=final):
            return "collect", "trained and evaluated: result.json is written from its results"
        return "eval-only", "trained to the end: only the final evaluation runs"
    if os.path.isfile(os.path.join(d, "last_checkpoint")):
        return "resume", "resumes its last checkpoint (--resume)"
    return "start", "runs from scratch"


def describe(jobs: Sequence[RowJob], slot_list: Sequence[Optional[tuple]],
             restart: bool = False, python: Optional[str] = None,
             repo: Optional[str] = None) -> List[str]:
    """The lines ``run --dry-run`` prints: per job its :func:`decide` action and detail, and the
    command ``run`` would launch (for ``eval-only``, ``resume``, ``start``, ``restart``)."""
    lines = []
    for i, job in enumerate(jobs):
        action, detail = decide(job, restart)
        lines.append(f"# {job.name}: {action} ({detail})")
        if ACTIONS[action] is None:
            job.resume, job.eval_only = action == "resume", action == "eval-only"
            cmd, env = build_command(job, slot_list[i % len(slot_list)], python=python,
                                     repo=repo)
            lines.append("".join(f"{k}={v} " for k, v in env.items())
                         + " ".join(shlex.quote(c) for c in cmd))
    return lines


# ------------------------------------------------------------------------------------------
# how the row ran
# ------------------------------------------------------------------------------------------
def _load_yaml_chain(path, depth=0):
    """A yaml config with its ``_BASE_`` chain merged (a dict; {} when unreadable)."""
    import yaml

    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except (OSError, yaml.YAMLError):
        return {}
    base = data.pop("_BASE_", None)
    if base and depth < 10:
        merged = _load_yaml_chain(os.path.join(os.path.dirname(path), base), depth + 1)
        _deep_update(merged, data)
        return merged
    return data


def _deep_update(a, b):
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(a.get(k), dict):
            _deep_update(a[k], v)
        else:
            a[k] = v


def _git_commit(repo):
    try:
        head = subprocess.run(["git", "-C", repo, "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=20).stdout.strip()
        dirty = subprocess.run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (head or "unknown") + (" (uncommitted changes)" if dirty else "")


def _version(dist):
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


#: the keys compared between a run and the paper config of its column
_COMPARED = (("SOLVER.MAX_EPOCH", "epochs"), ("INPUT.SIZE_TRAIN", "input size"),
             ("MODEL.BACKBONE.NAME", "backbone"), ("MODEL.BACKBONE.DEPTH", "backbone depth"))


def _area(size):
    return size[0] * size[-1] if isinstance(size, (list, tuple)) and size else 0


def _short_reasons(ran, paper):
    reasons = []
    for key, what in _COMPARED:
        a, b = get_key(ran, key), get_key(paper, key)
        if a is None or b is None or a == b:
            continue
        if key == "SOLVER.MAX_EPOCH":
            if a < b:
                reasons.append(f"{a} of the paper config's {b} epochs")
        elif key == "INPUT.SIZE_TRAIN":
            if _area(a) < _area(b):
                reasons.append(f"input {list(a)}, the paper config's {list(b)}")
        else:
            reasons.append(f"{what} {a}, the paper config's {b}")
    return reasons


def provenance(job: RowJob, slot: Optional[tuple], column: Optional[str],
               repo: Optional[str] = None) -> Dict[str, Any]:
    """How the row ran, for ``result.json``: config file, overrides, seed, epochs and input size
    of the run (its ``config.yaml``) against the paper config of ``column``, the final weights
    and their SHA-256, the git commit, torch / FastReID versions, device and GPU count, and
    ``short_run``: why it is not comparable to the paper (``[]`` = it is)."""
    from ..deploy.runtime import sha256  # of model_final.pth (numpy: imported only here)

    repo = repo or repo_root()
    ran = _load_yaml_chain(os.path.join(job.out_dir, "config.yaml"))
    paper_cfg = get_method(job.row.method).configs.get(column or "")
    paper = _load_yaml_chain(os.path.join(repo, paper_cfg)) if paper_cfg else {}
    weights = os.path.join(job.out_dir, "model_final.pth")
    reasons = _short_reasons(ran, paper)
    if not ran:
        reasons.append("the run's config.yaml is missing: its settings are unknown")
    if not paper_cfg:
        reasons.append(f"no paper config for the test set {column!r}")
    return {
        "config_file": job.config_file, "paper_config": paper_cfg, "overrides":
        list(job.row.overrides), "opts": list(job.opts), "seed": job.seed
        if job.seed is not None else get_key(ran, "SEED"),
        "epochs": get_key(ran, "SOLVER.MAX_EPOCH"), "epochs_paper_config":
        get_key(paper, "SOLVER.MAX_EPOCH"), "input_size": get_key(ran, "INPUT.SIZE_TRAIN"),
        "input_size_paper_config": get_key(paper, "INPUT.SIZE_TRAIN"),
        "weights": weights if os.path.isfile(weights) else None,
        "weights_sha256": sha256(weights) if os.path.isfile(weights) else None,
        "pretrained": get_key(ran, "MODEL.BACKBONE.PRETRAIN_PATH") or None,
        "git_commit": _git_commit(repo), "torch": _version("torch"),
        "fastreid": _version("fastreid"), "python": sys.version.split()[0],
        "device": get_key(ran, "MODEL.DEVICE") or "unknown",
        "gpus": len(slot) if slot else (0 if get_key(ran, "MODEL.DEVICE") == "cpu" else
                                        os.environ.get("CUDA_VISIBLE_DEVICES", "all visible")),
        "host": socket.gethostname(), "short_run": reasons,
    }


def _collect(job, cmd, wall_s, slot=None, repo=None, newer_than=None, since=None):
    """Write ``result.json`` from the evaluator's ``<dataset>_results.json`` (only those written
    after the file ``newer_than`` / the time ``since``, when given); None if there is none."""
    results = _results(job.out_dir, newer_than=newer_than, since=since)
    if not results:
        return None
    r = job.row
    t = get_table(r.method, r.table)
    test_set = next(iter(results))
    column = t.column_of(test_set) or test_set
    info = _read_json(os.path.join(job.out_dir, "row.json")) or {}
    result = {"key": r.key, "method": r.method, "table": r.table, "row": r.row,
              "label": r.label, "ours": r.ours, "guessed": r.guessed, "dataset": test_set,
              "column": column, "results": results, "paper": r.paper,
              "overrides": list(r.overrides), "opts": job.opts, "seed": job.seed,
              "config_file": job.config_file, "settings": job.settings, "command": cmd,
              "commands": info.get("commands", []),
              "provenance": provenance(job, slot, column, repo),
              "wall_s": round(wall_s, 1), "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S")}
    _write_json(os.path.join(job.out_dir, "result.json"), result)
    return result


def _record_command(job, action, cmd, env):
    path = os.path.join(job.out_dir, "row.json")
    info = _read_json(path) or {"settings": job.settings, "commands": []}
    info["settings"] = job.settings
    info["commands"].append({"action": action, "command": cmd, "env": env,
                             "pid": os.getpid(), "host": socket.gethostname(),
                             "at": time.strftime("%Y-%m-%dT%H:%M:%S")})
    _write_json(path, info)


def _empty_folder(d):
    for name in os.listdir(d):
        if name == LOCK_FILE:
            continue
        p = os.path.join(d, name)
        if os.path.isdir(p) and not os.path.islink(p):
            shutil.rmtree(p)
        else:
            os.remove(p)


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


def _die_with_parent_fn():
    """A ``preexec_fn`` that makes the child get SIGKILL when the runner (the thread that started
    it) dies, however it dies (Linux ``prctl(PR_SET_PDEATHSIG)``); None elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def preexec():
        prctl(1, signal.SIGKILL)    # PR_SET_PDEATHSIG
        if os.getppid() != parent:  # the runner died before prctl: go too
            os._exit(1)

    return preexec


def subprocess_launcher(cmd: Sequence[str], env: Dict[str, str], log_path: str,
                        timeout: Optional[float] = None,
                        cwd: Optional[str] = None) -> Union[int, str]:
    """Run ``cmd`` in its own session (process group), output appended to ``log_path``; returns
    its exit code (``"timeout"`` after ``timeout`` seconds, the whole group then killed). The
    child is killed when the runner dies (:func:`_die_with_parent_fn`)."""
    full_env = dict(os.environ, **env)
    with open(log_path, "ab") as log:
        log.write(f"\n$ {' '.join(shlex.quote(c) for c in cmd)}\n".encode())
        log.flush()
        p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=cwd,
                             stdin=subprocess.DEVNULL, start_new_session=True,
                             preexec_fn=_die_with_parent_fn())
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


def run_one(job: RowJob, slot: Optional[tuple],
            launcher: Callable[..., Union[int, str]] = subprocess_launcher,
            timeout: Optional[float] = None, python: Optional[str] = None,
            repo: Optional[str] = None, restart: bool = False) -> str:
    """Run (or skip, or collect) one row under its folder's lock, as :func:`decide` says; returns
    its final state: ``skipped``, ``conflict``, ``mismatch``, ``locked`` (``job.detail`` says
    why), ``done``, ``failed``, ``interrupted``."""
    os.makedirs(job.out_dir, exist_ok=True)
    lock = _acquire_lock(job.out_dir)
    if lock is not None:
        job.status, job.detail = "locked", _lock_text(lock)
        return job.status
    try:
        return _run_locked(job, slot, launcher, timeout, python, repo, restart)
    finally:
        _release_lock(job.out_dir)


def _run_locked(job, slot, launcher, timeout, python, repo, restart):
    action, job.detail = decide(job, restart)
    if ACTIONS[action] is not None and action != "collect":
        job.status = ACTIONS[action]
        return job.status
    status_path = os.path.join(job.out_dir, "status.json")
    if action == "restart":
        _empty_folder(job.out_dir)
    if action == "collect":
        _record_command(job, action, [], {})
        final = os.path.join(job.out_dir, "model_final.pth")
        _collect(job, [], 0.0, slot=slot, repo=repo, newer_than=final)
        _write_json(status_path, {"status": "done", "note": "collected from a finished run"})
        job.status = "done"
        return job.status
    job.resume, job.eval_only = action == "resume", action == "eval-only"
    cmd, env = build_command(job, slot, python=python, repo=repo)
    job.cmd, job.env, job.slot = cmd, env, slot
    _record_command(job, action, cmd, env)
    log_path = os.path.join(job.out_dir, "run.log")
    _write_json(status_path, {"status": "running", "command": cmd, "env": env,
                              "resume": job.resume, "pid": os.getpid(),
                              "host": socket.gethostname(),
                              "started_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
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
    if rc == 0 and _collect(job, cmd, wall, slot=slot, repo=repo, since=t0 - 1) is not None:
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
    """The line echoed when a row ends: its name and state, with the error of a failed row and
    what to do about a conflicting, mismatching or locked one."""
    msg = f"{job.name}: {state}"
    if state == "failed":
        _, st = read_row_state(job.out_dir)
        msg += f" ({(st or {}).get('error', '')})"
    elif state in ("conflict", "mismatch", "locked"):
        msg += f" ({job.detail})"
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
             echo: Optional[Callable[[str], Any]] = None,
             restart: bool = False) -> Dict[str, str]:
    """Run ``jobs`` on the slots of :func:`slots` (one after another without GPUs); a failing
    row is recorded and the others go on. Returns ``{job name: state}`` (the name is the row's
    key, with ``[config-seed]`` when the plan runs a row more than once).

    Raises:
        ConfigError: ``timeout`` not positive.
    """
    if timeout is not None and not timeout > 0:
        raise ConfigError(f"--timeout {timeout}: must be a positive number of seconds")
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
                            repo=repo, restart=restart)
        finally:
            free.put(slot)
        with lock:
            states[job.name] = state
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
            ev.wait(30)
        raise
    finally:
        if bar is not None:
            bar.close()
    if errors:
        raise errors[0]
    return states
