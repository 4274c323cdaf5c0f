"""Checkpoints that resume exactly, are never non-finite, and are written atomically.

FastReID's ``Checkpointer`` writes ``model_XXXX.pth`` in place and then ``last_checkpoint``
(a kill or a full disk during the write leaves ``last_checkpoint`` naming a partial file, or a
partial file where a good one was), saves weights that already hold inf/NaN after a diverging
step (and tags them as last), and keeps neither the generator states nor the sampler position.
:class:`PluginCheckpointer` (what :class:`~fastreid_plugins.engine.PluginTrainer` uses):

* writes ``<name>.pth.partial``, flushes and fsyncs it, then renames it onto ``<name>.pth``
  (``os.replace`` is atomic on POSIX), and writes ``last_checkpoint`` the same way, after the
  checkpoint is complete;
* refuses to write a checkpoint whose model or optimizer state holds a non-finite value
  (:class:`NonFiniteCheckpointError`, naming the tensors; ``last_checkpoint`` keeps naming the
  last good one), and refuses to load one (``--resume``);
* stores ``trainer_state`` (:class:`TrainerState`): the Python / NumPy / torch / CUDA generator
  states and the training sampler's seed and position (see :mod:`fastreid_plugins.seeding`).

Every checkpoint read (``MODEL.WEIGHTS``, ``--resume``, FastReID's ``Checkpointer`` through the
checkpoint patch) goes through :func:`load_checkpoint_file`: torch >= 2.6's ``weights_only``
loading with the types FastReID writes allowed; a file that is empty, truncated or not a torch
checkpoint at all (text, a zip without ``data.pkl``, a plain Python pickle) raises
:class:`~fastreid_plugins.errors.CorruptCheckpointError` naming it and what was found.
"""

from __future__ import annotations

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import collections
import copy
import logging
import os
import pickle
import time
import weakref
import zipfile
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Tuple

import torch
from fastreid.config import CfgNode
from fastreid.utils import comm
from fastreid.utils.checkpoint import Checkpointer

from .errors import (
    CheckpointUnpicklingError,
    CorruptCheckpointError,
    NonFiniteCheckpointError,
    TrainingFinishedError,
)
from .seeding import derive_seed, get_rng_state, resolve_seed, seed_all, set_rng_state

if TYPE_CHECKING:
    from fastreid.engine.train_loop import HookBase

__all__ = ["ResumableTrainerMixin", "PluginCheckpointer", "TrainerState",
           "NonFiniteCheckpointError",
           "CorruptCheckpointError", "TrainingFinishedError", "non_finite_tensors",
           "check_finite_state", "atomic_torch_save", "atomic_write_text", "load_checkpoint_file",
           "CheckpointUnpicklingError", "SAFE_CHECKPOINT_GLOBALS", "TRUST_ENV",
           "TrainingInterrupted", "weights_only", "TRAINING_KEYS"]

logger = logging.getLogger(__name__)

#: Types FastReID's own checkpoints hold besides tensors (scheduler state: ``Counter`` milestones).
SAFE_CHECKPOINT_GLOBALS = [collections.Counter, collections.OrderedDict]

TRUST_ENV = "FASTREID_PLUGINS_TRUST_CHECKPOINTS"

#: a legacy (non-zip) torch file is a pickle that starts with torch's magic number
#: 0x1950a86a20f9469cfc6c (these are its little-endian bytes as a pickled long)
_LEGACY_TORCH_MAGIC = b"\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"


def _corrupt(path, detail):
    size = os.path.getsize(path)
    return CorruptCheckpointError(
        f"Checkpoint {path!r} ({size} bytes) is not a complete torch checkpoint ({detail}): it is "
        "truncated or corrupt, e.g. a write that was interrupted or a partial copy. Copy it again, "
        "or use an earlier checkpoint (for --resume: write its file name into last_checkpoint "
        "next to it).")


def _not_a_checkpoint(path, found):
    size = os.path.getsize(path)
    return CorruptCheckpointError(
        f"{path!r} ({size} bytes) is not a torch checkpoint: {found}. MODEL.WEIGHTS must be a "
        "file written by torch.save, e.g. a run's model_final.pth.")


def _sniff(path, head):
    """Refuse files that are plainly no torch checkpoint, naming what they are instead."""
    if head[:4] == b"PK\x03\x04":
        if not zipfile.is_zipfile(path):
            raise _corrupt(path, "its zip directory is missing")
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if not any(n.endswith("/data.pkl") or n == "data.pkl" for n in names):
            listing = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
            raise _not_a_checkpoint(path, f"a zip archive without data.pkl (holds {listing})")
        return True
    if head[:1] == b"\x80":
        if _LEGACY_TORCH_MAGIC in head[:32]:
            return False
        if (b"\x80\x02\x8a\x0a" + _LEGACY_TORCH_MAGIC).startswith(head):
            raise _corrupt(path, "it ends inside the legacy torch header")
        protocol = head[1] if len(head) > 1 else "?"
        raise _not_a_checkpoint(path, f"a Python pickle (protocol {protocol}) not written by "
                                      "torch.save")
    text = head.decode("utf-8", errors="replace")[:-3]  # the read may cut a character
    if text and all(c.isprintable() or c in "\r\n\t" for c in text):
        first = text.splitlines()[0][:40] if text.strip() else text[:40]
        raise _not_a_checkpoint(path, f"a text file (it starts with {first!r})")
    raise _not_a_checkpoint(path, f"unknown content (first bytes {head[:8].hex(' ')})")


def load_checkpoint_file(path: str) -> Any:
    """Load a checkpoint with ``weights_only=True``, allowing the types FastReID itself writes.

    Args:
        path (str): a file written by ``torch.save`` (zip format, or the legacy pickle format).

    Returns:
        object: what was saved (a FastReID checkpoint dict, a bare state dict, ...), on the CPU.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CorruptCheckpointError: the file is empty, truncated or not a torch checkpoint: text, a
            zip without ``data.pkl``, a Python pickle not written by ``torch.save`` (named).
        CheckpointUnpicklingError: the file needs arbitrary unpickling; the message names the
            refused global and how to allow it (``FASTREID_PLUGINS_TRUST_CHECKPOINTS=1`` for
            files you trust).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Checkpoint file not found: {path!r}")
    with open(path, "rb") as f:
        head = f.read(64)
    if not head:
        raise _corrupt(path, "the file is empty")
    is_zip = _sniff(path, head)
    trust = os.environ.get(TRUST_ENV) == "1"
    try:
        if trust:
            return torch.load(path, map_location="cpu", weights_only=False)
        with torch.serialization.safe_globals(SAFE_CHECKPOINT_GLOBALS):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).splitlines()[0] if str(e) else repr(e)
        pickled = is_zip or head[:1] == b"\x80"  # a (legacy) pickle that needs more than tensors
        if trust or not pickled or "Weights only load failed" not in str(e):
            raise _corrupt(path, f"unpickling failed: {first}") from e
        raise CheckpointUnpicklingError(
            f"Checkpoint {path!r} contains pickled Python objects that "
            "torch.load(weights_only=True) "
            f"refuses to load ({first}). If you trust this file, "
            f"set {TRUST_ENV}=1 to load it with full unpickling."
        ) from e
    except (EOFError, RuntimeError, OSError, KeyError) as e:
        first = str(e).splitlines()[0] if str(e) else "end of file"
        raise _corrupt(path, f"{type(e).__name__}: {first}") from e


def non_finite_tensors(state: Any, prefix: str = "") -> List[Tuple[str, int]]:
    """``[(name, count)]`` of the floating-point tensors in the nested dict / list ``state`` that
    hold inf or NaN (``count`` non-finite elements)."""
    bad = []
    if isinstance(state, torch.Tensor):
        if state.is_floating_point() or state.is_complex():
            n = int((~torch.isfinite(state)).sum())
            if n:
                bad.append((prefix or "tensor", n))
    elif isinstance(state, dict):
        for k, v in state.items():
            bad.extend(non_finite_tensors(v, f"{prefix}.{k}" if prefix else str(k)))
    elif isinstance(state, (list, tuple)):
        for i, v in enumerate(state):
            bad.extend(non_finite_tensors(v, f"{prefix}[{i}]"))
    return bad


def _listing(bad, limit=8):
    shown = ", ".join(f"{k} ({n} non-finite)" for k, n in bad[:limit])
    return shown + (f", ... ({len(bad)} tensors in all)" if len(bad) > limit else "")


def check_finite_state(state: Any, what: str) -> None:
    """Raise :class:`NonFiniteCheckpointError` if ``state`` holds inf/NaN; ``what`` names it."""
    bad = non_finite_tensors(state)
    if bad:
        raise NonFiniteCheckpointError(f"{what} holds non-finite values: {_listing(bad)}.")


def _fsync_replace(tmp, path):
    os.replace(tmp, path)
    try:  # make the rename itself durable
        fd = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


def atomic_torch_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` through ``path + ".partial"`` and a rename: ``path`` is either
    its old content or the complete new one, never partial. On an error the partial file is
    removed and the error re-raised."""
    tmp = path + ".partial"
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        _fsync_replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(text: str, path: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename."""
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    _fsync_replace(tmp, path)


def _to_cpu(obj):
    """A copy of the nested dict / list ``obj`` with every tensor cloned onto the CPU (dict types
    such as ``Counter`` / ``OrderedDict`` kept)."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        out = copy.copy(obj)
        for k, v in obj.items():
            out[k] = _to_cpu(v)
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return copy.deepcopy(obj)


#: keys of a FastReID / fastreid-plugins checkpoint that only ``--resume`` needs
TRAINING_KEYS = ("optimizer", "scheduler", "lr_sched", "iteration", "trainer_state",
                 "grad_scaler")


def weights_only(ckpt: Dict[str, Any], source: str, config_text: Optional[str] = None
                 ) -> Dict[str, Any]:
    """The weights-only form of a training checkpoint: what evaluation and the tools need.

    Keeps ``model`` (``module.`` prefixes of a DDP save removed) and ``epoch`` (so ``--resume``
    of a finished run still says it is finished), adds ``config`` (the run's config YAML text,
    when given) and ``stripped_from`` (``{"file": basename of source, "dropped": [keys]}``);
    drops the optimizer, scheduler, iteration, trainer state and anything else.

    Args:
        ckpt (dict): ``{"model": state_dict, ...}`` or a bare state dict.
        source (str): the file it came from (its base name is recorded).
        config_text (str | None): the config to store.
    """
    state = ckpt.get("model", ckpt)
    state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
    keep = ("model", "epoch")
    dropped = sorted(k for k in ckpt if k not in keep) if "model" in ckpt else []
    out: Dict[str, Any] = {"model": state}
    if "model" in ckpt and "epoch" in ckpt:
        out["epoch"] = ckpt["epoch"]
    if config_text is not None:
        out["config"] = config_text
    out["stripped_from"] = {"file": os.path.basename(source), "dropped": dropped}
    return out


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, after the checkpoint of the last finished epoch was written.

    :func:`fastreid_plugins.cli.run_cli` prints one line: where training stopped, the checkpoint,
    and the command that resumes (the same command with ``--resume``). ``checkpoint`` is ``None``
    when no epoch had finished (nothing to resume)."""

    def __init__(self, message: str, checkpoint: Optional[str]) -> None:
        super().__init__(message)
        self.message = message
        self.checkpoint = checkpoint
        self.resumable = checkpoint is not None


class TrainerState:
    """The checkpointable ``trainer_state``: generator states and the training sampler's state.

    ``state_dict()`` is taken when a checkpoint is written (``trainer.iter`` iterations done);
    ``load_state_dict()`` only keeps the state for :meth:`PluginTrainer.resume_or_load
    <fastreid_plugins.engine.PluginTrainer.resume_or_load>`, which applies it.
    """

    VERSION = 1

    def __init__(self, trainer: Any) -> None:
        self._trainer = weakref.ref(trainer)
        self.loaded = None

    def state_dict(self) -> Dict[str, Any]:
        tr = self._trainer()
        loader = tr.data_loader
        sampler = getattr(loader, "sampler_state", None)
        mini_batch = loader.batch_sampler.batch_size
        state = {"version": self.VERSION, "rng": get_rng_state(), "iter": int(tr.iter),
                 "mini_batch_size": int(mini_batch), "world_size": comm.get_world_size()}
        if sampler is not None:
            state["sampler"] = sampler.state_dict(tr.iter * mini_batch)
        return state

    def load_state_dict(self, state: Optional[Dict[str, Any]]) -> None:
        self.loaded = state


class PluginCheckpointer(Checkpointer):
    """FastReID's ``Checkpointer`` with atomic writes, non-finite refusal and clear load errors.

    Build it like FastReID's (``PluginCheckpointer(model, save_dir, save_to_disk=...,
    optimizer=..., **schedulers, trainer_state=TrainerState(trainer))``) or from one with
    :meth:`from_checkpointer`.
    """

    @classmethod
    def from_checkpointer(cls, ck: Checkpointer, **extra: Any) -> PluginCheckpointer:
        """A :class:`PluginCheckpointer` with ``ck``'s model, folder, rank role and
        checkpointables, plus ``extra`` checkpointables."""
        return cls(ck.model, ck.save_dir, save_to_disk=ck.save_to_disk,
                   **ck.checkpointables, **extra)

    def save(self, name: str, **kwargs: Any) -> None:
        """Write ``<save_dir>/<name>.pth`` atomically and tag it in ``last_checkpoint``.

        Raises:
            NonFiniteCheckpointError: the model or an optimizer state holds inf/NaN; nothing is
                written and ``last_checkpoint`` is unchanged.
        """
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        bad = non_finite_tensors({"model": data["model"], "optimizer": data.get("optimizer", {})})
        if bad:
            last = self.get_checkpoint_file() if self.has_checkpoint() else ""
            keep = (f"last_checkpoint still names {last!r}" if last
                    else "no earlier checkpoint exists")
            raise NonFiniteCheckpointError(
                f"Training diverged: not writing {name}.pth because the weights hold non-finite "
                f"values: {_listing(bad)}; {keep}. Lower SOLVER.BASE_LR, use warm-up "
                "(SOLVER.WARMUP_ITERS) or gradient clipping (SOLVER.CLIP_GRADIENTS.ENABLED).")
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        atomic_torch_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def save_state(self, name: str, data: Dict[str, Any]) -> str:
        """Write ``data`` (a full checkpoint dict, e.g. :func:`snapshot`'s) as
        ``<save_dir>/<name>.pth`` atomically and tag it in ``last_checkpoint``; returns its path.

        Raises:
            NonFiniteCheckpointError: the model state holds inf/NaN (nothing written).
        """
        check_finite_state({"model": data.get("model", {}),
                            "optimizer": data.get("optimizer", {})}, f"Checkpoint {name}.pth")
        path = os.path.join(self.save_dir, f"{name}.pth")
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_torch_save(data, path)
        self.tag_last_checkpoint(f"{name}.pth")
        return path

    def snapshot(self, **kwargs: Any) -> Dict[str, Any]:
        """What :meth:`save` would write now, copied to the CPU (tensors cloned): a later
        :meth:`save_state` writes the state of this moment."""
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        return _to_cpu(data)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        atomic_write_text(last_filename_basename, os.path.join(self.save_dir, "last_checkpoint"))

    def load(self, path: str, checkpointables: Optional[List[str]] = None) -> Dict[str, Any]:
        """FastReID's ``load``; a checkpoint naming a missing file or holding non-finite weights is
        an error (:class:`FileNotFoundError` / :class:`NonFiniteCheckpointError`)."""
        if path and not os.path.isfile(path):
            src = (f" (named by {os.path.join(self.save_dir, 'last_checkpoint')})"
                   if path == self.get_checkpoint_file() else "")
            raise FileNotFoundError(f"Checkpoint file not found: {path!r}{src}.")
        return super().load(path, checkpointables=checkpointables)

    def _load_model(self, checkpoint):
        state = checkpoint.get("model")
        if isinstance(state, dict):
            bad = non_finite_tensors(state)
            if bad:
                raise NonFiniteCheckpointError(
                    f"Checkpoint {self._loading!r} holds non-finite weights: {_listing(bad)}. "
                    "Resume from an earlier model_XXXX.pth (write its name into "
                    "last_checkpoint) or train again with a lower SOLVER.BASE_LR.")
        return super()._load_model(checkpoint)

    def _load_file(self, f):
        self._loading = f
        return load_checkpoint_file(f)


class ResumableTrainerMixin:
    """Put before FastReID's ``DefaultTrainer`` (``class T(ResumableTrainerMixin,
    DefaultTrainer)``): seeds the run with ``SEED``, checkpoints through
    :class:`PluginCheckpointer` with :class:`TrainerState`, and resumes exactly.

    The training loader must come from :func:`fastreid_plugins.data.train_loader.seeded_loader`
    (``PluginTrainer.build_train_loader`` builds it there) for the sampler position to be
    restored.
    """

    def __init__(self, cfg: CfgNode) -> None:
        self.seed = resolve_seed(cfg)
        if self.seed != cfg.SEED:  # -1 (drawn) or an alias: every builder below sees the seed
            cfg = cfg.clone()
            cfg.defrost()
            cfg.SEED = self.seed
            cfg.freeze()
        seed_all(self.seed + comm.get_rank())
        self._rng_to_restore = None
        self._epoch_snapshot = None  # (epoch, checkpoint dict) of the last finished epoch
        super().__init__(cfg)

    def build_hooks(self) -> List[HookBase]:
        """FastReID's hooks; the checkpointer becomes a
        :class:`~fastreid_plugins.checkpoint.PluginCheckpointer` that also saves
        ``trainer_state`` (set here, before FastReID's ``PeriodicCheckpointer`` takes it)."""
        self.checkpointer = PluginCheckpointer.from_checkpointer(
            self.checkpointer, trainer_state=TrainerState(self))
        return super().build_hooks()

    def resume_or_load(self, resume: bool = True) -> None:
        """FastReID's ``resume_or_load``, resuming exactly: the training sampler continues at the
        checkpoint's position and the generator states are restored when training starts.

        Raises:
            TrainingFinishedError: ``resume`` and the last checkpoint is the final epoch.
        """
        state = self.checkpointer.checkpointables["trainer_state"]
        state.loaded = None
        super().resume_or_load(resume=resume)
        if not (resume and self.checkpointer.has_checkpoint()):
            return
        if self.start_epoch >= self.max_epoch:
            last = self.checkpointer.get_checkpoint_file()
            longer = (f"raise SOLVER.MAX_EPOCH (e.g. SOLVER.MAX_EPOCH {self.max_epoch + 10}) and "
                      "--resume again")
            if state.loaded is None:  # weights-only (SOLVER.KEEP_FULL_CHECKPOINTS False)
                longer += (" (it is weights-only: the optimizer and sampler restart; "
                           "SOLVER.KEEP_FULL_CHECKPOINTS True keeps the full final checkpoint)")
            raise TrainingFinishedError(
                f"--resume: this run has already finished: {last!r} is the checkpoint of epoch "
                f"{self.start_epoch} of SOLVER.MAX_EPOCH={self.max_epoch}. To train longer, "
                f"{longer}; to evaluate it, run --eval-only MODEL.WEIGHTS {last}.")
        self._apply_trainer_state(state.loaded)
        logger.info(f"Resumed after epoch {self.start_epoch}/{self.max_epoch}: the weights "
                    "continue exactly; the loss values of the progress lines are running "
                    "medians, which restart here, so they differ from an uninterrupted run's for "
                    "a while.")

    def _apply_trainer_state(self, loaded):
        loader = self.data_loader
        sampler = getattr(loader, "sampler_state", None)
        mini = loader.batch_sampler.batch_size
        start_iter = self.start_epoch * self.iters_per_epoch
        position, seed = start_iter * mini, self.seed
        if loaded is None:
            logger.warning("The checkpoint has no trainer_state (written by FastReID or an older "
                           "version): the sampler continues at its position, but the generator "
                           "states restart, so the run will differ from an uninterrupted one.")
        else:
            saved = loaded.get("sampler")
            if saved is not None:
                seed = int(saved["seed"])
                if seed != self.seed:
                    logger.info(f"Resuming the training stream of the checkpoint's seed {seed} "
                                f"(SEED is {self.seed})")
                if int(saved["position"]) != position:
                    logger.warning(
                        f"The checkpoint's sampler position {saved['position']} does not match "
                        f"{start_iter} iterations of {mini} images (SOLVER.IMS_PER_BATCH or the "
                        "number of processes changed?): continuing at the latter.")
            if comm.get_rank() == 0:
                self._rng_to_restore = loaded["rng"]
            else:  # the checkpoint holds rank 0's states only
                seed_all(derive_seed(seed, 4, comm.get_rank(), start_iter))
        if sampler is not None:
            sampler.load_state_dict({"seed": seed, "position": position})
            self._trainer._data_loader_iter = iter(loader)

    #: a new in-memory snapshot only after this many times the last one's copy time (at most
    #: ~5% of the training time goes to copies; epochs of a second or two skip some)
    SNAPSHOT_COST_RATIO = 20

    def after_epoch(self) -> None:
        """FastReID's hooks, then (main process) an in-memory copy of the checkpoint of this
        finished epoch, unless a checkpoint of it is on disk already: what Ctrl-C writes.

        The copy (model, optimizer, scheduler and trainer state, on the CPU) is skipped while the
        last one is younger than :attr:`SNAPSHOT_COST_RATIO` times its copy time; Ctrl-C then
        writes that earlier epoch, from which the run resumes just as exactly."""
        super().after_epoch()
        if not comm.is_main_process() or self.epoch >= self.max_epoch - 1:
            return
        if self._saved_epoch() == self.epoch:
            self._epoch_snapshot = None
            return
        t0 = time.perf_counter()
        last_at, cost = getattr(self, "_snapshot_timing", (0.0, 0.0))
        if self._epoch_snapshot is not None and t0 - last_at < self.SNAPSHOT_COST_RATIO * cost:
            return
        self._epoch_snapshot = (self.epoch, self.checkpointer.snapshot(epoch=int(self.epoch)))
        t1 = time.perf_counter()
        self._snapshot_timing = (t1, t1 - t0)

    def _saved_epoch(self):
        """The epoch of the checkpoint ``last_checkpoint`` names (``model_0007.pth`` -> 7)."""
        if not self.checkpointer.has_checkpoint():
            return None
        name = os.path.basename(self.checkpointer.get_checkpoint_file())
        stem = name[len("model_"):-len(".pth")] if name.startswith("model_") else ""
        return int(stem) if stem.isdigit() else None

    def _on_interrupt(self) -> TrainingInterrupted:
        """Write the last finished epoch's checkpoint (atomically) and describe it."""
        done = self._saved_epoch()
        where = f"during epoch {self.epoch + 1}/{self.max_epoch}"
        snap, self._epoch_snapshot = self._epoch_snapshot, None
        if snap is not None and comm.is_main_process():
            epoch, data = snap
            path = self.checkpointer.save_state(f"model_{epoch:04d}", data)
            return TrainingInterrupted(f"Interrupted {where}; saved the checkpoint of epoch "
                                       f"{epoch + 1}: {path}", path)
        if done is not None:
            path = self.checkpointer.get_checkpoint_file()
            return TrainingInterrupted(f"Interrupted {where}; the checkpoint of epoch {done + 1} "
                                       f"is {path}", path)
        return TrainingInterrupted(f"Interrupted {where}, before the first epoch finished: no "
                                   "checkpoint to resume from (rerun the command)", None)

    def train(self) -> Optional[Dict[str, Any]]:
        """FastReID's ``train``, after restoring the generator states of a resumed checkpoint.

        Raises:
            TrainingInterrupted: Ctrl-C (``KeyboardInterrupt``); the checkpoint of the last
                finished epoch was written first, so ``--resume`` continues exactly there.
        """
        if self._rng_to_restore is not None:
            set_rng_state(self._rng_to_restore)
            self._rng_to_restore = None
        try:
            results = super().train()
        except TrainingInterrupted:
            raise
        except KeyboardInterrupt:
            raise self._on_interrupt() from None
        if (getattr(self, "iter", -1) >= self.max_iter and comm.is_main_process()
                and not self.cfg.SOLVER.KEEP_FULL_CHECKPOINTS):
            self._keep_weights_only()
        return results

    def _keep_weights_only(self) -> None:
        """A finished run needs no resume state: ``model_final.pth`` / ``model_best.pth`` become
        weights-only (:func:`weights_only`, atomically), the intermediate ``model_XXXX.pth``
        are removed (``SOLVER.KEEP_FULL_CHECKPOINTS False``)."""
        folder = self.checkpointer.save_dir
        if not folder or not os.path.isfile(os.path.join(folder, "model_final.pth")):
            return
        cfg_path = os.path.join(folder, "config.yaml")
        text = open(cfg_path).read() if os.path.isfile(cfg_path) else self.cfg.dump()
        before = after = 0
        for name in sorted(os.listdir(folder)):
            path = os.path.join(folder, name)
            if name in ("model_final.pth", "model_best.pth"):
                before += os.path.getsize(path)
                atomic_torch_save(weights_only(load_checkpoint_file(path), path, text), path)
                after += os.path.getsize(path)
            elif name.startswith("model_") and name.endswith(".pth") and name[6:-4].isdigit():
                before += os.path.getsize(path)
                os.remove(path)
        logger.info(f"Training finished: model_final.pth kept weights-only and intermediate "
                    f"checkpoints removed ({before / 1e6:.1f} MB -> {after / 1e6:.1f} MB; "
                    "SOLVER.KEEP_FULL_CHECKPOINTS True keeps them)")
