"""CLIP-SENet trainer: the plugins' trainer with loaders that carry camera / viewpoint indices and
an optimizer whose SEM group has its own learning rate and weight decay.

FastReID's loaders build a :class:`~fastreid.data.common.CommDataset`, whose samples hold only
``images/targets/camids/img_paths``. :class:`CLIPSENetTrainer` sets the engine's ``dataset_cls``
to :class:`~fastreid_plugins.data.veri_viewpoint.SideInfoDataset`, which adds ``viewids`` and
``sie_camids``: its training loader is the one training data path of every trainer
(:mod:`fastreid_plugins.data.train_loader`: same transforms, samplers, batch sizes, workers,
checked once), its test loaders the engine's; it only adds the viewpoint check. Seeding is the
engine's: the shared ``SEED`` key (the paper's 3407 in the configs; ``MODEL.CLIPSENET.SEED`` is an
alias), applied by :func:`fastreid_plugins.engine.setup` before the trainer builds the model and
the loaders (:mod:`fastreid_plugins.seeding`).
"""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

from typing import Any, Dict, Optional, Tuple

import torch
from fastreid.config import CfgNode
from torch import nn
from torch.utils.data import DataLoader

from ..data.veri_viewpoint import UNKNOWN_VIEWPOINT, SideInfoDataset
from ..engine import PluginTrainer
from ..patches.trainer import param_group_overrides

__all__ = ["CLIPSENetTrainer", "sem_param_overrides"]


def _unwrap(model):
    return getattr(model, "module", model)


def sem_param_overrides(cfg: CfgNode,
                        model: nn.Module) -> Dict[int, Dict[str, Optional[float]]]:
    """``{id(param): {"lr": factor, "weight_decay": wd or None}}`` for the SEM's trainable
    parameters, or ``{}`` when ``SEM.LR_FACTOR`` is 1 and ``SEM.WEIGHT_DECAY`` < 0 (FastReID's
    groups unchanged).

    Raises:
        ValueError: ``SEM.LR_FACTOR`` < 0.
    """
    if "CLIPSENET" not in cfg.MODEL:
        return {}
    s = cfg.MODEL.CLIPSENET.SEM
    if s.LR_FACTOR < 0:
        raise ValueError(f"MODEL.CLIPSENET.SEM.LR_FACTOR={s.LR_FACTOR} must be >= 0")
    sem = getattr(_unwrap(model), "sem", None)
    if sem is None or (s.LR_FACTOR == 1.0 and s.WEIGHT_DECAY < 0):
        return {}
    wd = float(s.WEIGHT_DECAY) if s.WEIGHT_DECAY >= 0 else None
    return {id(p): {"lr": float(s.LR_FACTOR), "weight_decay": wd}
            for p in sem.parameters() if p.requires_grad}


class CLIPSENetTrainer(PluginTrainer):
    """:class:`~fastreid_plugins.engine.PluginTrainer` whose batches also hold ``viewids`` and
    ``sie_camids`` (see :class:`~fastreid_plugins.data.veri_viewpoint.SideInfoDataset`), and
    whose optimizer trains the SEM at ``SOLVER.BASE_LR x MODEL.CLIPSENET.SEM.LR_FACTOR`` with
    weight decay ``MODEL.CLIPSENET.SEM.WEIGHT_DECAY`` (< 0: FastReID's).

    VehicleID test sets keep the plugins' VehicleID loader (no cameras or viewpoints there).
    """

    dataset_cls = SideInfoDataset

    @classmethod
    def build_optimizer(cls, cfg: CfgNode,
                        model: nn.Module) -> Tuple[torch.optim.Optimizer, Any]:
        """The plugins' optimizer; the SEM's parameters get ``lr x SEM.LR_FACTOR`` (every
        FastReID factor, e.g. the bias one, still applies) and, when ``SEM.WEIGHT_DECAY >= 0``,
        that weight decay (LayerNorms included). Schedulers scale every group alike, so the ratio
        holds for the whole run.

        CLIP-ReID (Li et al., AAAI 2023), for comparison, fine-tunes CLIP's ViT-B/16 image
        encoder at Adam lr 5e-6, weight decay 1e-4 (bias lr x2), 70x lower than the 3.5e-4 of
        its ResNet-50 runs (configs/veri/vit_prom.yml vs cnn_prom.yml of its code).
        """
        overrides = sem_param_overrides(cfg, model)
        if not overrides:
            return super().build_optimizer(cfg, model)
        with param_group_overrides(overrides):
            return super().build_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg: CfgNode) -> DataLoader:
        """The engine's training loader over :class:`SideInfoDataset` (built and checked once,
        :mod:`fastreid_plugins.data.train_loader`), then the viewpoint check.

        Raises:
            ValueError: ``CV.VIEWPOINT`` is on and no training image has a viewpoint label.
        """
        loader = super().build_train_loader(cfg)
        _check_viewpoints(cfg, loader.dataset, "train", cfg.DATASETS.NAMES)
        return loader

    @classmethod
    def build_test_loader(cls, cfg: CfgNode, dataset_name: str) -> Tuple[DataLoader, int]:
        loader, num_query = super().build_test_loader(cfg, dataset_name)
        _check_viewpoints(cfg, loader.dataset, "test", (dataset_name,))
        return loader, num_query


def _check_viewpoints(cfg, dataset, split, names):
    """``CV.VIEWPOINT`` on and not one viewpoint label in the split: an error, not a model that
    silently learns only the "unknown" embedding.

    Raises:
        ValueError: names the datasets, the split and the label files looked for.
    """
    if "CLIPSENET" not in cfg.MODEL or not cfg.MODEL.CLIPSENET.CV.VIEWPOINT:
        return
    views = getattr(dataset, "viewids", None)
    if views is None or not len(views):  # e.g. VehicleID's test loader: no side information
        return
    if all(v == UNKNOWN_VIEWPOINT for v in views):
        from ..data.veri_viewpoint import orientation_files
        raise ValueError(
            f"MODEL.CLIPSENET.CV.VIEWPOINT is on but no {split} image of {tuple(names)} has a "
            f"viewpoint label. VeRiViewpoint reads {orientation_files(split)} under "
            "<root>/veri/ (Wang et al., ICCV 2017 annotations); put one there, or set "
            "MODEL.CLIPSENET.CV.VIEWPOINT False.")
