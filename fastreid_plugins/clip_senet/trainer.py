"""CLIP-SENet trainer: the plugins' trainer with loaders that carry camera / viewpoint indices.

FastReID's loaders build a :class:`~fastreid.data.common.CommDataset`, whose samples hold only
``images/targets/camids/img_paths``. :class:`CLIPSENetTrainer` builds the same loaders (same
transforms, samplers, batch sizes, workers) over
:class:`~fastreid_plugins.data.veri_viewpoint.SideInfoDataset`, which adds ``viewids`` and
``sie_camids``, and seeds every RNG with ``MODEL.CLIPSENET.SEED`` when it is >= 0 (the paper
uses 3407).
"""

from fastreid.utils.env import seed_all_rng

from ..data.veri_viewpoint import SideInfoDataset
from ..engine import PluginTrainer

__all__ = ["CLIPSENetTrainer"]


class CLIPSENetTrainer(PluginTrainer):
    """:class:`~fastreid_plugins.engine.PluginTrainer` whose batches also hold ``viewids`` and
    ``sie_camids`` (see :class:`~fastreid_plugins.data.veri_viewpoint.SideInfoDataset`).

    VehicleID test sets keep the plugins' VehicleID loader (no cameras or viewpoints there).
    """

    dataset_cls = SideInfoDataset

    def __init__(self, cfg):
        seed = cfg.MODEL.CLIPSENET.SEED if "CLIPSENET" in cfg.MODEL else -1
        if seed >= 0:
            seed_all_rng(seed)
        super().__init__(cfg)
