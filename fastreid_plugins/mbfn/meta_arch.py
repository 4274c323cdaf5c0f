"""MBFN: the improved multi-branch feature fusion network for vehicle re-identification."""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

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
    edge_middle_weights,
    has_event_storage,
    split_backbone,
    stage_out_channels,
)
from .config import validate_mbfn_config

__all__ = ["MBFN", "mbfn_part_weights"]

BRANCHES = ("global", "local1", "local2")


def mbfn_part_weights(cfg: CfgNode) -> Optional[List[float]]:
    """Local Branch 2's part weights from ``MODEL.MBFN.WEIGHTS`` (None when disabled).

    ``WEIGHTS.VALUES`` if given, else alpha for the first and last part and beta for the parts in
    between (paper, "Weighted local feature" and Fig. 4: "we assign the weight alpha to the upper
    and lower parts of the image, and the weight of the middle part to beta"; alpha = 0.3,
    beta = 0.4). With ``WEIGHTS.NORMALIZE "rms"`` they are divided by their root mean square
    (``[0.3, 0.4, 0.3]`` -> ``[0.891, 1.188, 0.891]``), which keeps the parts' squared norm in the
    descriptor and in the triplet distances on average and keeps the ratio alpha : beta.

    Raises:
        ValueError: "rms" normalisation of all-zero weights.
    """
    w = cfg.MODEL.MBFN.WEIGHTS
    if not w.ENABLED:
        return None
    if len(w.VALUES):
        vals = [float(v) for v in w.VALUES]
    else:
        vals = edge_middle_weights(cfg.MODEL.MBFN.LOCAL2.NUM_PARTS, float(w.ALPHA), float(w.BETA))
    if w.NORMALIZE == "rms":
        rms = (sum(v * v for v in vals) / len(vals)) ** 0.5
        if rms == 0:
            raise ValueError("MODEL.MBFN.WEIGHTS.NORMALIZE='rms' cannot scale all-zero weights "
                             f"{vals}")
        vals = [v / rms for v in vals]
    return vals


@META_ARCH_REGISTRY.register()
class MBFN(PluginMetaArch):
    """MBFN: Global Branch + Local Branch 1 (2 parts) + Local Branch 2 (3 weighted parts).

    * Shared trunk (``MODEL.MBFN.SPLIT_AT``): by default the whole ResNet through ``layer4``
      ("three feature learning branches ... after res_conv5 layer"); every branch starts on the
      conv5 map. ``"layer3.1"``: each branch owns a copy of ``layer3[1:]`` + ``layer4`` (FastReID's
      MGN split; the local branches' ``layer4`` at stride 1), for comparison.
    * Global Branch: GAP -> BNNeck -> classifier.
    * Local Branch 1: CAM (r = 4) on the map, then (i) its own global feature (the "red dotted
      area", ``BRANCH_GLOBAL.ENABLED``): 1x1 conv before GAP (reduce channels) -> GAP -> 1x1 conv
      after GAP (raise dim) -> BNNeck -> classifier, and (ii) 2 parts (``LOCAL1.DIRECTION``,
      ``LOCAL1.NUM_PARTS``), each GAP -> 1x1 conv -> BNNeck -> classifier.
    * Local Branch 2: the same with 3 parts, weighted alpha (top, bottom) and beta (middle),
      alpha = 0.3, beta = 0.4 (Fig. 4; the "green dotted area"); see
      :class:`~fastreid_plugins.modeling.parts.PartBranch` for where the weights act
      (``WEIGHTS.APPLY_AT``) and :func:`mbfn_part_weights` for ``WEIGHTS.NORMALIZE``.
    * Loss (Eq. 1-3): ``L_softmax + lambda * L_triplet`` (lambda = 0.1, batch-hard, margin 1.2):
      CE on every classifier; triplet on each branch's global feature and on each local branch's
      fused part feature (``LOSS.TRIPLET_ON_PARTS``).
    * Test descriptor: concat of all branch features (BNNeck features; parts weighted).

    Reference:
        Rong, Xu, Zhou, Han, Li, Pan, "A vehicle re-identification framework based on the improved
        multi-branch feature fusion network", Sci. Rep. 11, 20210 (2021), Fig. 3-5, Eq. 1-3,
        Tables 2-4.

    Args (built by :meth:`from_config`):
        trunk (nn.Module): shared trunk.
        global_branch, local1, local2 (PartBranch or None): the branches (None = switched off).
        pixel_mean, pixel_std (list[float]); lam (float): triplet weight; ce_reduction (str);
        triplet_on_parts (bool); ce_kwargs, tri_kwargs (dict): FastReID loss settings.

    Inputs:
        FastReID batch dict (``images`` (B, 3, H, W) in [0, 255]; ``targets`` (B,) in training) or,
        in eval mode, a bare (B, 3, H, W) tensor.

    Returns:
        Training: dict of weighted loss terms (``loss_cls_*``, ``loss_triplet_*``). Eval: (B, D)
        descriptor, D = :attr:`feat_dim`.
    """

    @configurable
    def __init__(self, *, trunk: nn.Module, global_branch: Optional[PartBranch],
                 local1: Optional[PartBranch], local2: Optional[PartBranch],
                 pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 gather_losses: bool, lam: float, ce_reduction: str, triplet_on_parts: bool,
                 ce_kwargs: Dict[str, float], tri_kwargs: Dict[str, Any]) -> None:
        super().__init__(pixel_mean, pixel_std, gather_losses)
        if global_branch is None and local1 is None and local2 is None:
            raise ValueError("MBFN needs at least one branch")
        self.trunk = trunk
        self.global_branch = global_branch
        self.local1 = local1
        self.local2 = local2
        self.lam = float(lam)
        self.ce_reduction = ce_reduction
        self.triplet_on_parts = bool(triplet_on_parts)
        self.ce_kwargs = dict(ce_kwargs)
        self.tri_kwargs = dict(tri_kwargs)

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        validate_mbfn_config(cfg)
        m = cfg.MODEL.MBFN
        # branch copies are deep copies of the built backbone: they carry its loaded weights
        trunk, stage = split_backbone(build_backbone(cfg), m.SPLIT_AT)
        channels = stage_out_channels(trunk, stage)
        norm = cfg.MODEL.HEADS.NORM

        def local_branch(local, weights):
            cam = ChannelAttention(channels, m.CAM_REDUCTION) if m.USE_CAM else None
            bg = m.BRANCH_GLOBAL
            return PartBranch(
                copy_stage(stage, stride_one=True), cam=cam,
                reduce=ReduceConv(channels, bg.REDUCE_DIM, norm) if bg.ENABLED else None,
                global_head=(PartHead.from_cfg(cfg, bg.REDUCE_DIM, bg.EMBED_DIM)
                             if bg.ENABLED else None),
                part_heads=[PartHead.from_cfg(cfg, channels, m.PART_DIM)
                            for _ in range(local.NUM_PARTS)],
                direction=local.DIRECTION, part_weights=weights,
                weight_at=m.WEIGHTS.APPLY_AT,
                part_fusion=m.WEIGHTS.FUSION if weights is not None else "concat")

        L = cfg.MODEL.LOSSES
        return {
            "trunk": trunk,
            "global_branch": PartBranch(
                copy_stage(stage), global_head=PartHead.from_cfg(cfg, channels, m.GLOBAL.EMBED_DIM))
            if m.USE_GLOBAL else None,
            "local1": local_branch(m.LOCAL1, None) if m.USE_LOCAL1 else None,
            "local2": local_branch(m.LOCAL2, mbfn_part_weights(cfg)) if m.USE_LOCAL2 else None,
            **cls.base_kwargs(cfg),
            "lam": m.LOSS.LAMBDA, "ce_reduction": m.LOSS.CE_REDUCTION,
            "triplet_on_parts": m.LOSS.TRIPLET_ON_PARTS,
            "ce_kwargs": {"eps": L.CE.EPSILON, "alpha": L.CE.ALPHA},
            "tri_kwargs": {"margin": L.TRI.MARGIN, "norm_feat": L.TRI.NORM_FEAT,
                           "hard_mining": L.TRI.HARD_MINING},
        }

    def branches(self) -> List[Tuple[str, PartBranch]]:
        """``[(name, PartBranch)]`` of the branches that are switched on, in descriptor order."""
        out = [(n, getattr(self, a))
               for n, a in zip(BRANCHES, ("global_branch", "local1", "local2"))]
        return [(n, b) for n, b in out if b is not None]

    @property
    def feat_dim(self):
        """D of the test descriptor (all branches)."""
        return sum(b.out_dim for _, b in self.branches())

    def branch_outputs(self, images: torch.Tensor, targets: Optional[torch.Tensor] = None
                       ) -> Dict[str, Dict[str, Any]]:
        """Training-mode outputs ``{name: PartBranch output}`` for normalised ``images``."""
        x = self.trunk(images)
        return {n: b(x, targets) for n, b in self.branches()}

    def forward(self, batched_inputs: Union[Dict[str, Any], torch.Tensor]
                ) -> Union[Dict[str, torch.Tensor], torch.Tensor]:
        images = self.preprocess_image(batched_inputs)
        if self.training:
            targets = self.targets(batched_inputs)
            return self.losses(self.branch_outputs(images, targets), targets)
        x = self.trunk(images)
        return torch.cat([b(x) for _, b in self.branches()], 1)

    def losses(self, outputs: Dict[str, Dict[str, Any]],
               targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Eq. 3: ``L_softmax + lambda * L_triplet``, as separate logged terms.

        Returns:
            dict[str, Tensor]: ``loss_cls_global``, ``loss_cls_local{k}_global``,
            ``loss_cls_local{k}_part{i}`` (divided by the number of classifiers if
            ``CE_REDUCTION`` is "mean") and ``loss_triplet_global``,
            ``loss_triplet_local{k}_global``,
            ``loss_triplet_local{k}_parts`` (times lambda, divided by their number if "mean").
        """
        cls, tri = {}, {}
        for name, o in outputs.items():
            if o["global"] is not None:
                g = name if name == "global" else f"{name}_global"
                cls[f"loss_cls_{g}"] = o["global"]["cls_outputs"]
                tri[f"loss_triplet_{g}"] = o["global"]["features"]
            for i, p in enumerate(o["parts"]):
                cls[f"loss_cls_{name}_part{i}"] = p["cls_outputs"]
            if o["part_feature"] is not None and self.triplet_on_parts:
                tri[f"loss_triplet_{name}_parts"] = o["part_feature"]
        if has_event_storage():
            first = next(o for o in outputs.values())
            head = first["global"] if first["global"] is not None else first["parts"][0]
            log_accuracy(head["pred_class_logits"].detach(), targets)
        mean = self.ce_reduction == "mean"
        ce, t = self.ce_kwargs, self.tri_kwargs
        losses = {k: cross_entropy_loss(v, targets, ce["eps"], ce["alpha"])
                  / (len(cls) if mean else 1)
                  for k, v in cls.items()}
        if self.lam > 0:
            for k, f in tri.items():
                losses[k] = triplet_loss(f, targets, t["margin"], t["norm_feat"], t["hard_mining"],
                                         gather=self.gather_losses) \
                    * self.lam / (len(tri) if mean else 1)
        return losses

