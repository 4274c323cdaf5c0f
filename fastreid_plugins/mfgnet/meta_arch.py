"""MFG-Net: multiple fine-grained feature network for vehicle re-identification."""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

from typing import Any, Dict, Optional, Sequence, Union

import torch
from fastreid.config import CfgNode, configurable
from fastreid.modeling.losses import cross_entropy_loss, log_accuracy
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import nn

from ..layers import ChannelAttention
from ..losses.triplet import triplet_loss  # FastReID's, over every DDP rank's embeddings
from ..modeling.base import PluginMetaArch, build_backbone
from ..modeling.parts import (
    PartBranch,
    PartHead,
    ReduceConv,
    copy_stage,
    has_event_storage,
    split_backbone,
    stage_out_channels,
)
from .config import validate_mfgnet_config

__all__ = ["MFGNet"]


@META_ARCH_REGISTRY.register()
class MFGNet(PluginMetaArch):
    """MFG-Net: a global branch and a horizontal-stripe local branch on a shared ResNet.

    * Shared trunk (``MODEL.MFGNET.SPLIT_AT``): by default the whole ResNet through ``layer4``
      (Sec. 2.2: "two feature extraction branches are built after the Conv_5 layer"); each branch
      starts on the conv5 map. ``"layer3.1"`` gives each branch its own copy of ``layer3[1:]`` +
      ``layer4`` (FastReID's MGN split; the local branch's ``layer4`` at stride 1), for comparison.
    * Global branch: CAM -> 1x1 conv before GAP (C -> C, BN, ReLU: "keeping the scale of the
      feature map unchanged") -> GAP -> 1x1 conv after GAP (C -> C: the pooled features "are fused
      first, and the fused features are classified") -> BNNeck -> classifier. Losses: softmax CE
      (Eq. 1) and batch-hard triplet (Eq. 2) on the fused feature (before the BNNeck).
    * Local branch: CAM -> ``NUM_STRIPES`` horizontal stripes (h/N x w x c) -> per stripe GAP ->
      1x1 conv (-> ``LOCAL.EMBED_DIM``) -> BNNeck -> classifier; CE only (Sec. 2.3).
    * Total loss (Eq. 3): ``ALPHA * L_softmax + BETA * L_triplet`` (alpha = 1, beta = 0.1, margin
      0.3), ``L_softmax`` = sum (``LOSS.CE_REDUCTION``) of the global and every stripe CE.
    * Test descriptor: concat of the BNNeck features of the global branch and of every stripe
      ("all branch information will be assembled into a comprehensive feature"), compared by
      Euclidean distance in the paper configs (Sec. 2.1, ``TEST.METRIC euclidean``).

    Reference:
        Xu, Rong, Zhou, Pan, Liu, "Joint Multiple Fine-grained feature for Vehicle
        Re-Identification", Array 14, 100152 (2022), Fig. 1, Eq. 1-3, Tables 3-4.

    Args (built by :meth:`from_config`):
        trunk (nn.Module): shared trunk, (B, 3, H, W) -> (B, C', h, w) (the conv5 map for the
            paper's split, the ``layer3[0]`` map for the MGN split).
        global_branch (PartBranch): global branch.
        local_branch (PartBranch or None): stripe branch (None: ablation without it).
        pixel_mean, pixel_std (list[float]): input normalisation (``MODEL.PIXEL_MEAN/STD``).
        alpha, beta (float): loss weights; use_triplet (bool); ce_reduction (str);
        ce_kwargs (dict): ``eps``, ``alpha`` for FastReID's ``cross_entropy_loss``;
        tri_kwargs (dict): ``margin``, ``norm_feat``, ``hard_mining`` for FastReID's
            ``triplet_loss``.

    Inputs:
        FastReID batch dict (``images`` (B, 3, H, W) in [0, 255]; ``targets`` (B,) in training) or,
        in eval mode, a bare (B, 3, H, W) tensor.

    Returns:
        Training: dict of weighted loss terms ``loss_cls_global``, ``loss_cls_stripe{i}``,
        ``loss_triplet_global``. Eval: (B, D) descriptor, D = :attr:`feat_dim`.
    """

    @configurable
    def __init__(self, *, trunk: nn.Module, global_branch: PartBranch,
                 local_branch: Optional[PartBranch], pixel_mean: Sequence[float],
                 pixel_std: Sequence[float], gather_losses: bool, alpha: float, beta: float,
                 use_triplet: bool, ce_reduction: str, ce_kwargs: Dict[str, float],
                 tri_kwargs: Dict[str, Any]) -> None:
        super().__init__(pixel_mean, pixel_std, gather_losses)
        self.trunk = trunk
        self.global_branch = global_branch
        self.local_branch = local_branch
        self.alpha = float(alpha)
        self.beta = float(beta)
        self.use_triplet = bool(use_triplet)
        self.ce_reduction = ce_reduction
        self.ce_kwargs = dict(ce_kwargs)
        self.tri_kwargs = dict(tri_kwargs)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        validate_mfgnet_config(cfg)
        m = cfg.MODEL.MFGNET
        # branch copies are deep copies of the built backbone: they carry its loaded weights
        trunk, stage = split_backbone(build_backbone(cfg), m.SPLIT_AT)
        channels = stage_out_channels(trunk, stage)
        reduce_dim = m.GLOBAL.REDUCE_DIM or channels      # 0 = C: the paper keeps the scale
        embed_dim = m.GLOBAL.EMBED_DIM or channels
        norm = cfg.MODEL.HEADS.NORM

        def cam():
            return ChannelAttention(channels, m.CAM_REDUCTION) if m.USE_CAM else None

        if m.GLOBAL.USE_CONV:
            reduce = ReduceConv(channels, reduce_dim, norm)
            ghead = PartHead.from_cfg(cfg, reduce_dim, embed_dim)
        else:  # Table 4 baseline: GAP -> BNNeck -> classifier
            reduce, ghead = None, PartHead.from_cfg(cfg, channels, 0)
        global_branch = PartBranch(copy_stage(stage), cam=cam(), reduce=reduce, global_head=ghead)
        local_branch = None
        if m.USE_LOCAL:
            local_branch = PartBranch(
                copy_stage(stage, stride_one=True), cam=cam(),
                part_heads=[PartHead.from_cfg(cfg, channels, m.LOCAL.EMBED_DIM)
                            for _ in range(m.NUM_STRIPES)],
                direction=m.STRIPE_DIRECTION)
        L = cfg.MODEL.LOSSES
        return {
            "trunk": trunk, "global_branch": global_branch, "local_branch": local_branch,
            **cls.base_kwargs(cfg),
            "alpha": m.LOSS.ALPHA, "beta": m.LOSS.BETA, "use_triplet": m.LOSS.USE_TRIPLET,
            "ce_reduction": m.LOSS.CE_REDUCTION,
            "ce_kwargs": {"eps": L.CE.EPSILON, "alpha": L.CE.ALPHA},
            "tri_kwargs": {"margin": L.TRI.MARGIN, "norm_feat": L.TRI.NORM_FEAT,
                           "hard_mining": L.TRI.HARD_MINING},
        }

    @property
    def feat_dim(self):
        """D of the test descriptor (global + all stripes)."""
        d = self.global_branch.out_dim
        return d + (self.local_branch.out_dim if self.local_branch is not None else 0)

    def branch_outputs(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None
                       ) -> Dict[str, Optional[Dict[str, Any]]]:
        """Training-mode head outputs of every branch for normalised ``images``.

        Returns:
            dict: ``{"global": PartBranch output, "local": PartBranch output or None}``.
        """
        x = self.trunk(images)
        return {"global": self.global_branch(x, targets),
                "local": self.local_branch(x, targets) if self.local_branch is not None else None}

    def forward(self, batched_inputs: Union[Dict[str, Any], torch.Tensor]
                ) -> Union[Dict[str, torch.Tensor], torch.Tensor]:
        images = self.preprocess_image(batched_inputs)
        if self.training:
            targets = self.targets(batched_inputs)
            return self.losses(self.branch_outputs(images, targets), targets)
        x = self.trunk(images)
        feats = [self.global_branch(x)]
        if self.local_branch is not None:
            feats.append(self.local_branch(x))
        return torch.cat(feats, 1)

    def losses(self, outputs: Dict[str, Optional[Dict[str, Any]]],
               targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Eq. 3: ``alpha * L_softmax + beta * L_triplet`` as separate logged terms.

        Args:
            outputs (dict): from :meth:`branch_outputs`.
            targets (Tensor): (B,) identity labels.

        Returns:
            dict[str, Tensor]: ``loss_cls_global``, ``loss_cls_stripe{i}`` (alpha-weighted, divided
            by the number of classifiers if ``CE_REDUCTION`` is "mean") and ``loss_triplet_global``
            (beta-weighted, when the triplet is on).
        """
        g = outputs["global"]["global"]
        if has_event_storage():
            log_accuracy(g["pred_class_logits"].detach(), targets)
        cls = {"loss_cls_global": g["cls_outputs"]}
        if outputs.get("local") is not None:
            for i, p in enumerate(outputs["local"]["parts"]):
                cls[f"loss_cls_stripe{i}"] = p["cls_outputs"]
        ce_scale = self.alpha / (len(cls) if self.ce_reduction == "mean" else 1)
        ce = self.ce_kwargs
        losses = {k: cross_entropy_loss(v, targets, ce["eps"], ce["alpha"]) * ce_scale
                  for k, v in cls.items()}
        if self.use_triplet:
            t = self.tri_kwargs
            losses["loss_triplet_global"] = triplet_loss(
                g["features"], targets, t["margin"], t["norm_feat"], t["hard_mining"],
                gather=self.gather_losses) * self.beta
        return losses
