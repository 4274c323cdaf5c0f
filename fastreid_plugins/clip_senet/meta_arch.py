"""CLIP-SENet meta-architecture (registered in FastReID's ``META_ARCH_REGISTRY`` as ``CLIPSENet``).

Reference:
    Lu, Fu, Chu, Wang, Xu, "CLIP-SENet: CLIP-based Semantic Enhancement Network for Vehicle
    Re-identification", arXiv:2502.16815 (2025), Sec. III, Fig. 2, Eq. 1-8.
"""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import contextlib
import logging
from typing import Any, Dict, Optional, Sequence, Union

import torch
from fastreid.config import CfgNode, configurable
from fastreid.layers import pooling
from fastreid.modeling.heads import EmbeddingHead
from fastreid.modeling.losses import cross_entropy_loss, log_accuracy
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import nn

from .. import upstream
from ..losses.supcon import supcon_kwargs_from_cfg, supcon_loss
from ..losses.triplet import triplet_loss  # FastReID's, over every DDP rank's embeddings
from ..modeling.base import PluginMetaArch, build_backbone, loss_kwargs_from_cfg
from .config import CV_POSITIONS, SUPPORTED_LOSSES, check_loss_names, validate_clip_senet_config  # noqa: F401
from .modules import AFEM, VIEWPOINT_GROUPS, CameraViewEmbedding, FeatureFusion
from .tinyclip import (
    SemanticExtractionModule,
    load_sem_weights,
    resolve_weights_activation,
    skip_random_init,
    tinyclip_vision_config,
)

__all__ = ["CLIPSENet", "build_cnn_backbone", "build_sem", "SUPPORTED_LOSSES", "CV_POSITIONS"]

logger = logging.getLogger(__name__)



def build_cnn_backbone(cfg: CfgNode) -> nn.Module:
    """The CNN backbone (Eq. 1): FastReID's backbone by ``MODEL.BACKBONE``.

    The paper's ResNeXt101-IBN is built with IBN-Net's layout (IBN in layer1-3, plain BN in
    layer4), the network of IBN-Net's ``resnext101_ibn_a-6ace051d.pth``; its weights come from
    :mod:`fastreid_plugins.modeling.pretrained` (``PRETRAIN_PATH`` -> torch.hub cache -> download,
    loaded strictly).

    Raises:
        FileNotFoundError: ``PRETRAIN`` True and no weights file found or fetched.
        ValueError: a weights file that does not match the architecture.
    """
    return build_backbone(cfg)


def build_sem(cfg: CfgNode) -> SemanticExtractionModule:
    """The SEM from ``MODEL.CLIPSENET.SEM`` (random weights, or ``WEIGHTS`` when ``PRETRAIN``).

    The activation is ``SEM.HIDDEN_ACT``, else that of the weights' ``config.json`` (when
    ``PRETRAIN``), else the variant's; it is kept in the SEM's state dict, so a model built for
    ``--eval-only`` (``PRETRAIN`` off) takes the trained one when ``MODEL.WEIGHTS`` is loaded.

    Raises:
        ValueError: unknown variant / inconsistent sizes / unknown activation.
        FileNotFoundError, SEMWeightsError: see :func:`~.tinyclip.load_sem_weights`.
    """
    s = cfg.MODEL.CLIPSENET.SEM
    weights = act = None
    if s.PRETRAIN:
        weights, act = resolve_weights_activation(s.WEIGHTS)
    config = tinyclip_vision_config(
        s.VARIANT, hidden_size=s.HIDDEN_SIZE, num_hidden_layers=s.NUM_LAYERS,
        num_attention_heads=s.NUM_HEADS, intermediate_size=s.INTERMEDIATE_SIZE,
        patch_size=s.PATCH_SIZE, image_size=s.INPUT_SIZE, projection_dim=s.PROJECTION_DIM,
        hidden_act=s.HIDDEN_ACT or act)
    with skip_random_init() if s.PRETRAIN else contextlib.nullcontext():
        sem = SemanticExtractionModule(config, use_projection=s.USE_PROJECTION)
    if s.PRETRAIN:
        load_sem_weights(sem, weights, pos_embed_interp=s.POS_EMBED_INTERP)
    if s.FREEZE:
        sem.freeze()
    return sem


@META_ARCH_REGISTRY.register()
class CLIPSENet(PluginMetaArch):
    r"""CLIP-based Semantic Enhancement Network.

    ::

        f_cnn   = GAP(CNN(x))                                    (Eq. 1, e.g. ResNeXt101-IBN)
        f_clip  = SEM(x [+ CV tokens])                           (Eq. 2, TinyCLIP image encoder)
        f_fuse  = FC([f_cnn; f_clip])                            (Eq. 3)
        f_afem  = AFEM(f_clip)                                   (Eq. 4)
        f       = f_afem + f_fuse   (or [f_afem; f_fuse])        (Eq. 5)
        logits  = classifier(BNNeck(f))                          (FastReID EmbeddingHead)
        loss    = CE_ls(logits) + SupCon(f)  (or + triplet)      (Eq. 6-8)

    The camera / viewpoint embeddings (CV) are added to ``f`` by default (``CV.POSITION
    "feature"``, the one position every Table IV row has); ``CV.POSITION "sem_tokens"`` adds them
    to every token of the SEM (after the patch + position embedding), as TransReID adds SIE to its
    ViT tokens. With the SEM off, ``f = f_cnn`` (FastReID's baseline with this head); with AFEM
    off, ``f = f_fuse``.

    Input: FastReID's batch dict (``images`` (B, 3, H, W) in [0, 255]; ``targets`` in training;
    ``sie_camids`` / ``viewids`` for CV, see :class:`~fastreid_plugins.data.veri_viewpoint.
    SideInfoDataset`) or a bare image tensor. Training returns ``{"loss_cls", "loss_supcon" |
    "loss_triplet"}``; eval returns the (B, D) BNNeck feature.

    Side information at test time: ``sie_camids``, else FastReID's test ``camids`` (raw camera
    indices there), else the unknown camera; missing ``viewids`` = unknown viewpoint. In training,
    a CV switch that is on requires its key (``sie_camids`` / ``viewids``) in the batch.

    Reference:
        Lu et al., "CLIP-SENet", arXiv:2502.16815 (2025), Sec. III, Fig. 2, Eq. 1-8;
        He et al., TransReID, ICCV 2021 (SIE); Luo et al., CVPR-W 2019 (BNNeck).
    """

    @configurable
    def __init__(self, *, backbone: nn.Module, pool: nn.Module,
                 sem: Optional[SemanticExtractionModule], fusion: Optional[FeatureFusion],
                 afem: Optional[AFEM], cv: Optional[CameraViewEmbedding], cv_position: str,
                 heads: nn.Module, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 gather_losses: bool = True, loss_kwargs: Dict[str, Any]) -> None:
        super().__init__(pixel_mean, pixel_std, gather_losses)
        self.backbone = backbone
        self.pool = pool
        self.sem = sem
        self.fusion = fusion
        self.afem = afem
        self.cv = cv
        self.cv_position = cv_position
        self.heads = heads
        self.loss_kwargs = loss_kwargs
        check_loss_names(loss_kwargs["loss_names"])

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        validate_clip_senet_config(cfg)
        c = cfg.MODEL.CLIPSENET
        backbone = build_cnn_backbone(cfg)
        cnn_dim = cfg.MODEL.BACKBONE.FEAT_DIM
        pool_name = cfg.MODEL.HEADS.POOL_LAYER
        pool = getattr(pooling, pool_name)()

        sem = fusion = afem = None
        feat_dim = cnn_dim
        if c.SEM.ENABLED:
            sem = build_sem(cfg)
            fuse_dim = c.FUSION.DIM or cnn_dim
            fusion = FeatureFusion(cnn_dim, sem.out_dim, fuse_dim, combine=c.COMBINE)
            if c.AFEM.ENABLED:
                afem = AFEM(sem.out_dim, fuse_dim, groups=c.AFEM.GROUPS,
                            weight_shape=c.AFEM.WEIGHT_SHAPE)
            feat_dim = fusion.combined_dim(with_afem=afem is not None)

        cv = None
        if c.CV.CAMERA or c.CV.VIEWPOINT:
            dim = sem.hidden_size if c.CV.POSITION == "sem_tokens" else feat_dim
            view_map = VIEWPOINT_GROUPS.get(c.CV.VIEWPOINT_GROUPS) if c.CV.VIEWPOINT else None
            cv = CameraViewEmbedding(dim, c.CV.NUM_CAMERAS, c.CV.NUM_VIEWPOINTS,
                                     camera=c.CV.CAMERA, viewpoint=c.CV.VIEWPOINT, coe=c.CV.COE,
                                     view_map=view_map)

        h = cfg.MODEL.HEADS
        heads = EmbeddingHead(feat_dim=feat_dim, embedding_dim=h.EMBEDDING_DIM,
                              num_classes=h.NUM_CLASSES, neck_feat=h.NECK_FEAT,
                              pool_type="Identity", cls_type=h.CLS_LAYER, scale=h.SCALE,
                              margin=h.MARGIN, with_bnneck=h.WITH_BNNECK, norm_type=h.NORM)
        loss_kwargs = loss_kwargs_from_cfg(cfg)
        if "SupConLoss" in loss_kwargs["loss_names"]:
            loss_kwargs["supcon"] = supcon_kwargs_from_cfg(cfg)
        return {
            "backbone": backbone, "pool": pool, "sem": sem, "fusion": fusion, "afem": afem,
            "cv": cv, "cv_position": c.CV.POSITION, "heads": heads,
            **cls.base_kwargs(cfg),
            "loss_kwargs": loss_kwargs,
        }

    # ------------------------------------------------------------------------------------------
    def _raw_images(self, batched_inputs):
        images = batched_inputs
        if isinstance(batched_inputs, dict):
            images = batched_inputs.get("images")
        return images.to(self.device, torch.float32) if isinstance(images, torch.Tensor) else images

    def side_information(self, batched_inputs: Union[Dict[str, Any], torch.Tensor],
                         batch_size: int) -> Optional[torch.Tensor]:
        """The (B, D) CV embedding of a batch, or None when CV is off."""
        if self.cv is None:
            return None
        batch = batched_inputs if isinstance(batched_inputs, dict) else {}
        camids = viewids = None
        if self.cv.camera_embed is not None:
            camids = batch.get("sie_camids")
            if camids is None and self.training:
                raise KeyError("MODEL.CLIPSENET.CV.CAMERA is on but the training batch has no "
                               "'sie_camids' (raw camera indices): train with CLIPSENetTrainer, "
                               "whose loaders use SideInfoDataset, or set CV.CAMERA False.")
            if camids is None:
                camids = batch.get("camids")  # FastReID's test camids are raw camera indices
        if self.cv.view_embed is not None:
            viewids = batch.get("viewids")
            if viewids is None and self.training:
                raise KeyError("MODEL.CLIPSENET.CV.VIEWPOINT is on but the training batch has no "
                               "'viewids': train on a dataset with viewpoint labels (e.g. "
                               "VeRiViewpoint) with CLIPSENetTrainer, or set CV.VIEWPOINT False.")
        return self.cv(batch_size, camids=camids, viewids=viewids)

    def features(self, batched_inputs: Union[Dict[str, Any], torch.Tensor]) -> torch.Tensor:
        """The final feature f (Eq. 5) before the BNNeck: (B, D)."""
        images = self.preprocess_image(batched_inputs)
        raw = self._raw_images(batched_inputs)
        f_cnn = self.pool(self.backbone(images)).flatten(1)
        sie = self.side_information(batched_inputs, images.shape[0])
        if self.sem is None:
            f = f_cnn
        else:
            f_clip = self.sem(raw, token_bias=sie if self.cv_position == "sem_tokens" else None)
            f_afem = self.afem(f_clip) if self.afem is not None else None
            f = self.fusion(f_cnn, f_clip, f_afem)
        if sie is not None and self.cv_position == "feature":
            f = f + sie
        return f

    def forward(self, batched_inputs: Union[Dict[str, Any], torch.Tensor]
                ) -> Union[Dict[str, torch.Tensor], torch.Tensor]:
        f = self.features(batched_inputs)[..., None, None]
        if not self.training:
            return self.heads(f)
        targets = self.targets(batched_inputs)
        if targets.sum() < 0:  # FastReID's PreciseBN convention
            targets = torch.zeros_like(targets)
        outputs = self.heads(f, targets)
        return self.losses(outputs, targets)

    def losses(self, outputs: Dict[str, torch.Tensor],
               targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """CE with label smoothing + SupCon (Eq. 6-8), or + batch-hard triplet (Fig. 3)."""
        if upstream.event_storage_active():
            log_accuracy(outputs["pred_class_logits"].detach(), targets)
        names, kw = self.loss_kwargs["loss_names"], self.loss_kwargs
        feats = outputs["features"]
        loss_dict = {}
        if "CrossEntropyLoss" in names:
            ce = kw["ce"]
            loss_dict["loss_cls"] = cross_entropy_loss(
                outputs["cls_outputs"], targets, ce["eps"], ce["alpha"]) * ce["scale"]
        if "SupConLoss" in names:
            loss_dict["loss_supcon"] = supcon_loss(
                feats, targets, kw["supcon"]["temperature"], gather=self.gather_losses
            ) * kw["supcon"]["scale"]
        if "TripletLoss" in names:
            t = kw["tri"]
            loss_dict["loss_triplet"] = triplet_loss(
                feats, targets, t["margin"], t["norm_feat"], t["hard_mining"],
                gather=self.gather_losses) * t["scale"]
        return loss_dict
