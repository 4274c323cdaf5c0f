"""SVRN trainer: the plugins' trainer, seeded by ``MODEL.SVRN.SEED``.

FastReID's ``default_setup`` seeds nothing unless told, so two runs of the same command start
from different weights and draw different batches (the identity sampler's seed comes from
numpy's global RNG). With ``MODEL.SVRN.SEED >= 0`` :class:`SVRNTrainer` seeds Python, numpy and
torch before the model and the loaders are built, which fixes the initial weights, the sampler's
seed and the augmentation draws. Until the engine has a project-wide ``SEED`` key this is SVRN's
own (as ``MODEL.CLIPSENET.SEED`` is CLIP-SENet's).
"""

from fastreid.utils.env import seed_all_rng

from ..engine import PluginTrainer

__all__ = ["SVRNTrainer"]


class SVRNTrainer(PluginTrainer):
    """:class:`~fastreid_plugins.engine.PluginTrainer` that seeds every RNG with
    ``MODEL.SVRN.SEED`` when it is >= 0 (before building the model, optimizer and loaders)."""

    def __init__(self, cfg):
        seed = cfg.MODEL.SVRN.SEED if "SVRN" in cfg.MODEL else -1
        if seed >= 0:
            seed_all_rng(seed)
        super().__init__(cfg)
