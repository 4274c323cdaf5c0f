"""Seeded, resumable training data: the shared ``SEED`` key, generator states, sampler position.

FastReID 1.4.0 has no seed key (``default_setup`` seeds every run with a fresh random number),
its identity samplers draw from the process-wide NumPy generator (``np.random.seed`` in a
generator run by the loader thread), the loader thread applies the random augmentations with the
process-wide torch / Python generators the model also uses, and a checkpoint keeps neither the
generator states nor where the sampler stood. Two identical commands therefore train different
weights, and ``--resume`` restarts the sampler from its first batch.

This module makes the training stream a function of ``(SEED, position)`` only:

* :func:`resolve_seed`: ``SEED`` (``-1``: draw one and log it; CLIP-SENet's
  ``MODEL.CLIPSENET.SEED`` and SVRN's ``MODEL.SVRN.SEED``, the keys these projects had before
  ``SEED``, are aliases, see :data:`SEED_ALIASES`).
* :class:`SeededSampler`: wraps FastReID's training sampler. It sets the wrapped sampler's seed
  from ``SEED``, runs it with private Python / NumPy / torch generator states (no other code can
  shift its draws), counts the indices this rank drew (the *position*) and can start at any
  position (``--resume``). Each index it yields is a :class:`Draw`: the dataset index plus the seed
  of that sample's random augmentation, ``derive_seed(SEED, rank, position)``.
* :class:`SeededDataset`: applies the wrapped dataset's transforms under the sample's own seed and
  restores the caller's generator states afterwards, so augmentation is the same in the main
  thread, in a loader thread or in any ``DataLoader`` worker process, and never shifts the model's
  random draws (dropout, SVRN's random-suppression ablation).
* ``SeededLoaderX`` (:func:`seeded_loader_class`): FastReID's ``DataLoaderX`` without its
  background thread and created lazily (at the first batch): the main thread fetches the
  batches (``DATALOADER.NUM_WORKERS > 0`` still loads them in parallel worker processes). A thread
  sharing the process-wide generators with the model makes the order of their draws a matter of
  thread scheduling.
* :func:`get_rng_state` / :func:`set_rng_state`: Python, NumPy, torch (and CUDA) generator states
  in a form ``torch.load(weights_only=True)`` accepts (checkpoints carry them, see
  :mod:`fastreid_plugins.checkpoint`).

The training loader that puts these pieces together (dataset -> sampler -> :class:`SeededSampler`
-> ``SeededLoaderX``) is built in one place, :mod:`fastreid_plugins.data.train_loader`.

Sampler protocol (for samplers written for this project, e.g. a DDP-aware identity sampler): a
sampler that defines ``load_state_dict(state)`` is fast-forwarded by calling it with
``{"seed": int, "position": int}``, meaning "the next ``iter()`` yields this rank's stream of the
given seed from its ``position``-th index on" (0-based, counted on this rank). It should then
draw from its own generator (e.g. ``np.random.default_rng((seed, epoch))``), never the global one.
Any other sampler (FastReID's) gets its ``_seed`` attribute set, and is fast-forwarded by
drawing and discarding ``position`` indices under its private generator states (measured 5-9 us
an index for ``NaiveIdentitySampler`` at VeRi-776's size, 37,778 images of 576 identities, on a
loaded 2-core machine: half of a 120-epoch run, 2.3 M indices, in 11-21 s).
"""

from __future__ import annotations

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import itertools
import logging
import random
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Dict, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from . import upstream
from .config import get_key

if TYPE_CHECKING:
    from fastreid.config import CfgNode

logger = logging.getLogger(__name__)

__all__ = ["SEED_ALIASES", "resolve_seed", "seed_all", "derive_seed", "get_rng_state",
           "set_rng_state", "RngStates", "Draw", "SeededSampler", "SeededDataset",
           "seeded_loader_class"]

#: Method-specific seed keys that fold into the shared ``SEED`` (used when ``SEED`` is -1).
SEED_ALIASES = ("MODEL.CLIPSENET.SEED", "MODEL.SVRN.SEED")


def resolve_seed(cfg: CfgNode, draw: bool = True) -> int:
    """The run's seed: ``cfg.SEED`` if >= 0, else an alias of :data:`SEED_ALIASES` if >= 0, else a
    seed drawn from NumPy's global generator (logged) when ``draw``, else -1.

    Raises:
        ValueError: ``SEED`` and an alias are both >= 0 and differ.
    """
    seed = int(cfg.SEED)
    for key in SEED_ALIASES:
        alias = get_key(cfg, key)
        if alias is None or int(alias) < 0:
            continue
        if seed >= 0 and int(alias) != seed:
            raise ValueError(f"SEED={seed} and {key}={alias} disagree: {key} is an alias of the "
                             "shared SEED key; set only SEED.")
        seed = int(alias)
    if seed < 0 and draw:
        # from NumPy's global generator, as FastReID's comm.shared_random_seed: a caller that
        # seeded it (np.random.seed) gets the same drawn seed every time
        seed = int(np.random.randint(2 ** 31))
        logger.info(f"SEED is -1: using the drawn seed {seed} "
                    f"(pass SEED {seed} to repeat this run)")
    return seed


def seed_all(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global generator and torch (CPU and every CUDA device)."""
    _seed_cpu(seed)
    torch.manual_seed(seed)


def _seed_cpu(seed):
    """Seed Python's ``random``, NumPy's global generator and torch's CPU generator only."""
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.default_generator.manual_seed(seed)


def derive_seed(seed: int, *keys: int) -> int:
    """A 32-bit seed that is a deterministic function of ``seed`` and the integer ``keys``
    (NumPy's ``SeedSequence``: well mixed, so ``(s, 0, 1)`` and ``(s, 1, 0)`` are unrelated)."""
    return int(np.random.SeedSequence([int(seed) % 2 ** 63, *[int(k) for k in keys]])
               .generate_state(1)[0])


def get_rng_state() -> Dict[str, Any]:
    """The process-wide generator states (Python, NumPy, torch CPU and CUDA if available), as
    plain Python values and tensors (loadable with ``torch.load(weights_only=True)``)."""
    version, internal, gauss = random.getstate()
    np_state = np.random.get_state(legacy=False)
    state = {
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss": gauss},
        "numpy": {"key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
                  "pos": int(np_state["state"]["pos"]), "has_gauss": int(np_state["has_gauss"]),
                  "gauss": float(np_state["gauss"])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    """Restore what :func:`get_rng_state` returned (CUDA states only if this host has as many
    devices)."""
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["state"].tolist()), py["gauss"]))
    n = state["numpy"]
    np.random.set_state({"bit_generator": "MT19937",
                         "state": {"key": n["key"].numpy().astype(np.uint32), "pos": n["pos"]},
                         "has_gauss": n["has_gauss"], "gauss": n["gauss"]})
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class RngStates:
    """A private set of Python / NumPy / torch CPU generator states.

    ``with states:`` swaps them in for the process-wide generators and swaps the caller's back on
    exit, so code inside draws from (and advances) only its private stream.
    """

    def __init__(self, seed: int) -> None:
        outer = self._get()
        _seed_cpu(seed)
        self._state = self._get()
        self._set(outer)

    @staticmethod
    def _get():
        return random.getstate(), np.random.get_state(), torch.get_rng_state()

    @staticmethod
    def _set(s):
        random.setstate(s[0])
        np.random.set_state(s[1])
        torch.set_rng_state(s[2])

    def __enter__(self):
        self._outer = self._get()
        self._set(self._state)
        return self

    def __exit__(self, *exc):
        self._state = self._get()
        self._set(self._outer)
        return False


@contextmanager
def _seeded(seed):
    """Run the body with all generators seeded by ``seed``; restore the caller's states after."""
    outer = RngStates._get()
    _seed_cpu(seed)
    try:
        yield
    finally:
        RngStates._set(outer)


class Draw(int):
    """A dataset index (an ``int``) that also carries ``seed``, the seed of this draw's random
    augmentation (see :class:`SeededDataset`). Pickles to ``DataLoader`` workers."""

    def __new__(cls, index: int, seed: int) -> Draw:
        obj = super().__new__(cls, index)
        obj.seed = seed
        return obj

    def __reduce__(self):
        return Draw, (int(self), self.seed)


class SeededSampler(Sampler):
    """A resumable, seeded view of a training sampler's infinite index stream on this rank.

    Args:
        sampler (Sampler): FastReID's training sampler (infinite; already restricted to this
            rank), or one following the protocol in this module's docstring.
        seed (int): the run's seed (:func:`resolve_seed`).
        rank (int): this process's rank (the augmentation seeds differ per rank).

    Attributes:
        start (int): the position (number of indices this rank had drawn) the next ``iter()``
            starts at; :meth:`load_state_dict` sets it.
    """

    #: indices drawn from a wrapped FastReID sampler per swap of the generator states
    CHUNK = 1024

    def __init__(self, sampler: Sampler, seed: int, rank: int = 0) -> None:
        self.sampler = sampler
        self.seed = int(seed)
        self.rank = int(rank)
        self.start = 0

    def state_dict(self, position: int) -> Dict[str, int]:
        """The state to checkpoint once the trainer has consumed ``position`` indices."""
        return {"seed": self.seed, "position": int(position)}

    def load_state_dict(self, state: Dict[str, int]) -> None:
        """Make the next ``iter()`` start at ``state["position"]`` of seed ``state["seed"]``."""
        self.seed = int(state["seed"])
        self.start = int(state["position"])

    def _inner_stream(self):
        inner = self.sampler
        if hasattr(inner, "load_state_dict"):  # the protocol: it fast-forwards itself
            inner.load_state_dict({"seed": derive_seed(self.seed, 0), "position": self.start})
            yield from inner
            return
        if hasattr(inner, "_seed"):  # FastReID's samplers read it when iteration starts
            upstream.set_sampler_seed(inner, derive_seed(self.seed, 0))
        states = RngStates(derive_seed(self.seed, 1))
        it = iter(inner)
        with states:
            for _ in itertools.islice(it, self.start):
                pass
        while True:  # draw ahead in chunks: a swap of the generator states costs ~0.3 ms
            with states:
                chunk = list(itertools.islice(it, self.CHUNK))
            yield from chunk
            if len(chunk) < self.CHUNK:
                return

    def __iter__(self) -> Iterator[Draw]:
        for pos, index in enumerate(self._inner_stream(), start=self.start):
            yield Draw(int(index), derive_seed(self.seed, 2, self.rank, pos))


class SeededDataset(Dataset):
    """Apply ``dataset[index]`` (image reading and random transforms) with every generator seeded
    by the index's :class:`Draw` seed, then restore the caller's generator states.

    Transparent: other attributes (``img_items``, ``num_classes``, ``pids``, ...) are the wrapped
    dataset's, and ``isinstance(seeded, type(dataset))`` holds (``__class__`` reports the wrapped
    class, as ``unittest.mock`` does), so code checking a trainer's ``dataset_cls`` still works.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    @property
    def __class__(self):
        return type(self.dataset)

    def __reduce__(self):  # pickle (spawned workers) by the real type, not __class__
        return SeededDataset, (self.dataset,)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        seed = getattr(index, "seed", None)
        if seed is None:
            return self.dataset[index]
        if torch.utils.data.get_worker_info() is not None:
            _seed_cpu(seed)  # a worker process: nothing else draws there, nothing to restore
            return self.dataset[int(index)]
        with _seeded(seed):
            return self.dataset[int(index)]

    def __getattr__(self, name):
        if name == "dataset":  # not yet set (unpickling in a worker)
            raise AttributeError(name)
        return getattr(self.dataset, name)


_LOADER_CLASS = []


def seeded_loader_class() -> type:
    """:class:`SeededLoaderX`, built at first use (it subclasses FastReID's ``DataLoaderX``)."""
    if _LOADER_CLASS:
        return _LOADER_CLASS[0]
    from fastreid.data.data_utils import DataLoaderX

    class SeededLoaderX(DataLoaderX):
        """FastReID's ``DataLoaderX`` (same device copy) without the background thread; the
        ``DataLoader`` iterator is created at the first batch, so the sampler position set by a
        resume applies."""

        def __iter__(self):
            self.iter = None
            self.batch = None
            return self

        def __next__(self):
            if self.iter is None:
                self.iter = DataLoader.__iter__(self)
                self.preload()
            return super().__next__()

        def shutdown(self):
            self.iter = None

    _LOADER_CLASS.append(SeededLoaderX)
    return SeededLoaderX

