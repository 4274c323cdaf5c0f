"""CLIP-SENet trainer: the plugins' trainer with loaders that carry camera / viewpoint indices.

FastReID's loaders build a :class:`~fastreid.data.common.CommDataset`, whose samples hold only
``images/targets/camids/img_paths``. :class:`CLIPSENetTrainer` builds the same loaders (same
transforms, samplers, batch sizes, workers) over
:class:`~fastreid_plugins.data.veri_viewpoint.SideInfoDataset`, which adds ``viewids`` and
``sie_camids``, and seeds every RNG with ``MODEL.CLIPSENET.SEED`` when it is >= 0 (the paper
uses 3407).
"""

import logging

from fastreid.data import build_reid_test_loader, build_reid_train_loader
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.transforms import build_transforms
from fastreid.utils import comm
from fastreid.utils.env import seed_all_rng

from .. import engine as _engine
from ..data.checks import check_dataset_items
from ..data.veri_viewpoint import SideInfoDataset
from ..engine import PluginTrainer, is_vehicleid

__all__ = ["CLIPSENetTrainer"]

logger = logging.getLogger(__name__)


class CLIPSENetTrainer(PluginTrainer):
    """:class:`~fastreid_plugins.engine.PluginTrainer` whose batches also hold ``viewids`` and
    ``sie_camids`` (see :class:`~fastreid_plugins.data.veri_viewpoint.SideInfoDataset`).

    VehicleID test sets keep the plugins' VehicleID loader (no cameras or viewpoints there).
    """

    def __init__(self, cfg):
        seed = cfg.MODEL.CLIPSENET.SEED if "CLIPSENET" in cfg.MODEL else -1
        if seed >= 0:
            seed_all_rng(seed)
        super().__init__(cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        items = []
        for name in cfg.DATASETS.NAMES:
            data = DATASET_REGISTRY.get(name)(root=_engine._root,
                                              combineall=cfg.DATASETS.COMBINEALL)
            if comm.is_main_process():
                data.show_train()
            items.extend(data.train)
        check_dataset_items(items, "train", cfg.DATASETS.NAMES)
        train_set = SideInfoDataset(items, build_transforms(cfg, is_train=True), relabel=True)
        return build_reid_train_loader(cfg, train_set=train_set)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        if is_vehicleid(dataset_name):
            return super().build_test_loader(cfg, dataset_name)
        data = DATASET_REGISTRY.get(dataset_name)(root=_engine._root)
        if comm.is_main_process():
            data.show_test()
        items = data.query + data.gallery
        check_dataset_items(items, "test", [dataset_name])
        test_set = SideInfoDataset(items, build_transforms(cfg, is_train=False), relabel=False)
        return build_reid_test_loader(test_set=test_set, test_batch_size=cfg.TEST.IMS_PER_BATCH,
                                      num_query=len(data.query),
                                      num_workers=cfg.DATALOADER.NUM_WORKERS)
