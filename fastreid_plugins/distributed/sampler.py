"""One global P x K identity batch per step, split across DDP ranks.

FastReID's ``NaiveIdentitySampler`` draws each rank's P/W identities separately, so one step's
global batch can repeat an identity across ranks. Under DDP the plugins' training loader
(:mod:`fastreid_plugins.data.train_loader`) uses :class:`GlobalIdentitySampler` instead
(``DIST.GLOBAL_SAMPLER``, :func:`use_global_sampler`).
"""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

from typing import Any, Dict, Iterator, Optional, Sequence

import numpy as np
from fastreid.config import CfgNode
from fastreid.utils import comm
from torch.utils.data import Sampler

__all__ = ["GlobalIdentitySampler", "use_global_sampler"]


class GlobalIdentitySampler(Sampler):
    """PK identity sampler drawing one global batch per step and giving rank r its r-th slice.

    Step s's global batch: P = ``batch_size / num_instances`` distinct identities drawn uniformly,
    K = ``num_instances`` images of each (without replacement when the identity has >= K images,
    with replacement otherwise), laid out identity after identity; rank r of W takes identities
    ``r P/W .. (r+1) P/W - 1`` (all K images of each, so every rank still holds positives when
    ``DIST.GATHER_LOSSES`` is off). The draw of step s depends only on ``(seed, s)`` (numpy's
    ``default_rng([seed, s])``), never on the world size or on earlier steps: W processes see
    exactly the global batches one process sees, and a resumed run restarts at any step
    (``start_iter``, or :meth:`load_state_dict` as :class:`fastreid_plugins.seeding.SeededSampler`
    calls it on ``--resume``) without replaying the earlier ones.

    Reference:
        Hermans, Beyer, Leibe. "In Defense of the Triplet Loss for Person Re-Identification",
        arXiv 1703.07737, Sec. 2 ("randomly sampling P classes (person identities), and then
        randomly sampling K images of each class"); CLIP-SENet Sec. 4.2: "each batch containing
        samples from 16 different vehicle identities, each represented by 8 images".

    Differs from FastReID's ``NaiveIdentitySampler``, which draws each rank's P/W identities
    separately (one step's global batch can repeat an identity across ranks), walks identities
    in passes that favour identities with many images, and seeds numpy's global RNG.

    Args:
        data_source (list): ``(img_path, pid, camid, ...)`` items (``dataset.img_items``).
        batch_size (int): the *global* batch size (``SOLVER.IMS_PER_BATCH``).
        num_instances (int): K (``DATALOADER.NUM_INSTANCE``).
        seed (int): the draw's seed (shared by all ranks).
        start_iter (int): the first global step to yield (resume).
        rank, world_size (int): default: the running process group's.

    Yields:
        int: dataset indices, ``batch_size / world_size`` per step (FastReID's ``BatchSampler``
        groups them into the rank's mini-batches).

    Raises:
        ValueError: ``batch_size`` is not a multiple of ``num_instances * world_size``, or the
            training set has fewer than P identities.
    """

    def __init__(self, data_source: Sequence[tuple], batch_size: int, num_instances: int,
                 seed: int, start_iter: int = 0, rank: Optional[int] = None,
                 world_size: Optional[int] = None) -> None:
        self.rank = comm.get_rank() if rank is None else int(rank)
        self.world_size = comm.get_world_size() if world_size is None else int(world_size)
        self.batch_size, self.num_instances = int(batch_size), int(num_instances)
        if self.num_instances < 1 or self.batch_size % (self.num_instances * self.world_size):
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH={batch_size} must be a multiple of DATALOADER.NUM_INSTANCE="
                f"{num_instances} x world size {self.world_size} "
                f"(= {num_instances * self.world_size}):"
                " each rank takes whole identities of the global P x K batch.")
        self.num_pids = self.batch_size // self.num_instances
        pid_index = {}
        for i, item in enumerate(data_source):
            pid_index.setdefault(item[1], []).append(i)
        self.pids = sorted(pid_index)
        self.pid_index = [np.asarray(pid_index[p], dtype=np.int64) for p in self.pids]
        if len(self.pids) < self.num_pids:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH={batch_size} / DATALOADER.NUM_INSTANCE={num_instances} = "
                f"{self.num_pids} identities per batch, but the training set has only "
                f"{len(self.pids)}: lower SOLVER.IMS_PER_BATCH or raise DATALOADER.NUM_INSTANCE.")
        self.seed, self.start_iter = int(seed), int(start_iter)

    def global_batch(self, step: int) -> np.ndarray:
        """(batch_size,) dataset indices of global step ``step``: P identities x K images."""
        rng = np.random.default_rng([self.seed, int(step)])
        chosen = rng.choice(len(self.pids), size=self.num_pids, replace=False)
        out = []
        for k in chosen:
            idx = self.pid_index[k]
            out.append(rng.choice(idx, size=self.num_instances,
                                  replace=len(idx) < self.num_instances))
        return np.concatenate(out)

    def rank_batch(self, step: int) -> np.ndarray:
        """This rank's slice of :meth:`global_batch` (``batch_size / world_size`` indices)."""
        n = self.batch_size // self.world_size
        return self.global_batch(step)[self.rank * n:(self.rank + 1) * n]

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """:mod:`fastreid_plugins.seeding`'s sampler protocol: the next ``iter()`` yields this
        rank's stream of seed ``state["seed"]`` from its ``state["position"]``-th index on (counted
        on this rank, 0-based). No other state exists: a step's draw depends on (seed, step)
        only."""
        self.seed = int(state["seed"])
        self.start_iter, self._skip = divmod(int(state["position"]),
                                             self.batch_size // self.world_size)

    def __iter__(self) -> Iterator[int]:
        step, skip = self.start_iter, getattr(self, "_skip", 0)
        while True:
            yield from self.rank_batch(step).tolist()[skip:]
            step, skip = step + 1, 0


def use_global_sampler(cfg: CfgNode) -> bool:
    """Whether ``cfg``'s training loader uses :class:`GlobalIdentitySampler`: asked for by name
    (``DATALOADER.SAMPLER_TRAIN: GlobalIdentitySampler``), or ``NaiveIdentitySampler`` under DDP
    with ``DIST.GLOBAL_SAMPLER``."""
    name = cfg.DATALOADER.SAMPLER_TRAIN
    if name == "GlobalIdentitySampler":
        return True
    return (name == "NaiveIdentitySampler" and comm.get_world_size() > 1
            and cfg.DIST.GLOBAL_SAMPLER)
