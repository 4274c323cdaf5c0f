"""Multi-process (DDP) training that computes what one process computes, also on CPU with gloo.

* :mod:`.gather`: the gradient-carrying all-gather of the cross-rank losses (pure);
* :mod:`.launch`: FastReID's launch worker with a gloo path, DDP for CPU modules, rank 0's
  buffers before evaluation;
* :mod:`.sampler`: one global P x K identity batch per step, split across ranks.

FastReID is changed only by :mod:`fastreid_plugins.patches.launch`. Config keys
(:func:`fastreid_plugins.config.add_plugins_config`): ``DIST.GATHER_LOSSES`` (True: the pair-based
losses gather embeddings and labels from all ranks; False: each rank's own images, FastReID's
behaviour) and ``DIST.GLOBAL_SAMPLER`` (True: :class:`GlobalIdentitySampler` under DDP).
"""

from .gather import all_gather_with_grad, gather_for_loss, is_multi_rank
from .launch import (
                     DistributedDataParallel,
                     broadcast_buffers,
                     distributed_worker,
                     same_on_all_ranks,
)
from .sampler import GlobalIdentitySampler, use_global_sampler

__all__ = ["all_gather_with_grad", "gather_for_loss", "is_multi_rank", "DistributedDataParallel",
           "broadcast_buffers", "distributed_worker", "same_on_all_ranks", "GlobalIdentitySampler",
           "use_global_sampler"]
