"""Shared losses. FastReID's ``cross_entropy_loss`` is reused as it is; ``triplet_loss`` is
FastReID's, over the embeddings of every DDP rank (:mod:`.triplet`)."""

from .supcon import SupConLoss, add_supcon_config, supcon_kwargs_from_cfg, supcon_loss
from .triplet import triplet_loss

__all__ = ["SupConLoss", "add_supcon_config", "supcon_kwargs_from_cfg", "supcon_loss",
           "triplet_loss"]
