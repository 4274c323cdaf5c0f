"""Shared losses. FastReID's own ``cross_entropy_loss`` / ``triplet_loss`` are reused as they are."""

from .supcon import SupConLoss, add_supcon_config, supcon_kwargs_from_cfg, supcon_loss

__all__ = ["SupConLoss", "add_supcon_config", "supcon_kwargs_from_cfg", "supcon_loss"]
