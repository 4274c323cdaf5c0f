"""SVRN meta-architecture: pyramid suppression network + salience navigation + cross-space
constraint, registered in FastReID's ``META_ARCH_REGISTRY`` as ``"SVRN"``.

Reference:
    Qian, He, Chen, Peng. Navigating Diverse Salient Features for Vehicle Re-identification.
    IEEE T-ITS 2022, Sec. III (Fig. 2-3, Algorithm 1, Eq. 1-13).
"""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import copy
from typing import Any, Dict, List, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from fastreid.config import CfgNode, configurable
from fastreid.modeling.losses import cross_entropy_loss, log_accuracy
from fastreid.modeling.meta_arch import META_ARCH_REGISTRY
from torch import nn

from .. import upstream
from ..losses.triplet import triplet_loss  # FastReID's, over every DDP rank's embeddings
from ..modeling.base import PluginMetaArch, build_backbone, loss_kwargs_from_cfg
from .config import num_suppressed, validate_svrn_config
from .critic import grid_critic
from .layers import ClassificationBlock, SalienceRanking, SpatialInformationMining, UnifiedLayer
from .losses import dcc_loss, icc_loss, reward_loss, vcc_loss
from .suppression import random_suppression_mask, suppression_mask, upsample_mask

__all__ = ["SVRN", "BLOCK_NAMES"]

#: ResNet block number (conv{b}_x naming) -> FastReID ResNet attribute(s).
BLOCK_NAMES = {1: ("conv1", "bn1", "relu", "maxpool"), 2: ("layer1",), 3: ("layer2",),
               4: ("layer3",), 5: ("layer4",)}


def _out_channels(layer):
    return max(m.out_channels for m in layer.modules() if isinstance(m, nn.Conv2d))


@META_ARCH_REGISTRY.register()
class SVRN(PluginMetaArch):
    """Salience-navigated vehicle re-identification network (SVRN).

    Reference:
        Qian, He, Chen, Peng. Navigating Diverse Salient Features for Vehicle
        Re-identification. IEEE T-ITS 2022.

    Stage 1 is the whole ResNet backbone; stage t+1 multiplies stage t's output of block
    ``start_blocks[t-1]`` by the up-sampled mask (Eq. 5) and runs its own deep copies
    of the later blocks (see :mod:`fastreid_plugins.svrn.config` for the block numbering).
    Every stage turns its block-5 output into X_t with the SIM module and classifies it with its
    own :class:`ClassificationBlock`. Stages 1..T-1 rank the G x G cells of X_t
    (:class:`SalienceRanking`, S_t) and suppress the top ``n_t = floor(alpha_t G^2)`` cells of the
    detached S_t (:func:`suppression_mask`), in training and at inference. With
    ``accumulate_masks`` (the paper: "Once a region has been chosen, it won't be chosen again
    during the following stages", after Eq. 5) stage t picks its n_t cells among those no
    earlier stage suppressed and stage t+1's input is masked by the union of M_1..M_t;
    otherwise by M_t alone. In training the grid critic (:func:`grid_critic`, no gradient)
    supplies R_score for the reward loss.

    The ranking layers (and the critic) exist only when something trains them: with
    ``mask_mode="salience"`` and at least one n_t > 0 (the config check then requires the
    reward). The random-mask and no-suppression ablations build none, so every parameter gets
    a gradient in every documented ablation (what DDP needs).

    Training loss (Eq. 13): ``L = L_tri + L_id + L_cross + L_reward`` with ``L_tri`` / ``L_id``
    summed over stages (batch-hard triplet on the GAP features, FastReID's CE on the BNNeck
    logits: one-hot as Eq. 13 with ``MODEL.LOSSES.CE.EPSILON 0``),
    ``L_cross = L_vcc + L_icc + mean_i L_dcc^i`` on the unified features
    G_t = g(F_t) (Eq. 6-12) and ``L_reward`` summed over stages 1..T-1.

    Args:
        backbone (nn.Module): FastReID ResNet (``build_resnet_backbone``).
        num_classes (int): training identities.
        num_stages (int): T.
        start_blocks (tuple[int]): T-1 strictly increasing blocks in [1, 4].
        alphas (tuple[float]): T-1 suppression ratios in [0, 1).
        grid (int): G.
        n_rounding (str): ``"floor"`` or ``"round"`` for n = alpha G^2.
        mask_mode (str): ``"salience"`` or ``"random"`` (ablation).
        accumulate_masks (bool): suppressed regions add up over the stages (the paper).
        sim (dict): ``name``, ``hidden``, ``kernel`` of :class:`SpatialInformationMining`.
        reduction_dim (int): D.
        eval_feat (str): test descriptor, a sum over the T stages of: ``"gap"`` F_t (Sec. III-C,
            the default), ``"gap_l2"`` F_t / ||F_t||, ``"unified"`` G_t = g(F_t) (Eq. 6; needs a
            cross-space term, which builds g) or ``"bn"`` the BNNeck feature.
        critic_mode (str): ``"decomposed"`` or ``"batched"``.
        reward (dict): ``enabled``, ``scale``, ``detach_feat``.
        cross (dict): ``dim`` and per-term ``{"enabled", "margin", "scale"}`` for vcc/icc/dcc
            (dcc: ``{"enabled", "scale", "normalize"}``, see :func:`dcc_loss`).
        loss_kwargs (dict): FastReID CE / triplet settings (``MODEL.LOSSES``).
        pixel_mean, pixel_std (list[float]): input normalisation.

    Forward:
        batched_inputs: FastReID batch dict (``images`` (B, 3, H, W) in [0, 255], ``targets``
        (B,) in training) or a bare (B, 3, H, W) tensor in eval mode.

    Returns:
        training: dict of scalar losses ``loss_cls``, ``loss_triplet``, ``loss_vcc``,
        ``loss_icc``, ``loss_dcc``, ``loss_reward`` (those enabled);
        eval: (B, D) sum of the T stage features (D = UNIFIED_DIM for ``"unified"``).

    Raises:
        ValueError: invalid configuration (see :func:`validate_svrn_config`) or a feature map
            that does not split into G x G cells.
    """

    @configurable
    def __init__(self, *, backbone: nn.Module, num_classes: int, num_stages: int,
                 start_blocks: Sequence[int], alphas: Sequence[float], grid: int,
                 n_rounding: str, mask_mode: str, sim: Dict[str, Any], reduction_dim: int,
                 eval_feat: str, critic_mode: str, reward: Dict[str, Any],
                 cross: Dict[str, Any], loss_kwargs: Dict[str, Any],
                 pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 gather_losses: bool = True, accumulate_masks: bool = True) -> None:
        super().__init__(pixel_mean, pixel_std, gather_losses)
        self.backbone = backbone
        self.num_stages = num_stages
        self.start_blocks = tuple(int(b) for b in start_blocks)
        self.alphas = tuple(float(a) for a in alphas)
        self.grid = grid
        self.n_cells = [num_suppressed(a, grid * grid, n_rounding) for a in self.alphas]
        self.mask_mode = mask_mode
        self.accumulate_masks = bool(accumulate_masks)
        self.eval_feat = eval_feat
        self.critic_mode = critic_mode
        self.reward = dict(reward)
        self.cross = copy.deepcopy(dict(cross))
        self.loss_kwargs = loss_kwargs

        # stages 2..T: their own deep copies of blocks b+1..5, stored under FastReID's names
        self.branches = nn.ModuleList()
        for b in self.start_blocks:
            branch = nn.ModuleDict()
            for blk in range(b + 1, 6):
                name, = BLOCK_NAMES[blk]
                branch[name] = copy.deepcopy(getattr(backbone, name))
            self.branches.append(branch)

        channels = _out_channels(backbone.layer4)
        self.sims = nn.ModuleList(
            SpatialInformationMining(sim["name"], sim["hidden"], sim["kernel"])
            for _ in range(num_stages))
        self.heads = nn.ModuleList(ClassificationBlock(channels, reduction_dim, num_classes)
                                   for _ in range(num_stages))
        # salience navigation: ranking layers only where the reward trains them
        self.navigated = mask_mode == "salience" and any(self.n_cells)
        if self.navigated and not self.reward["enabled"]:
            raise ValueError("SVRN: salience navigation needs the reward loss to train the ranking "
                             "layers (MODEL.SVRN.REWARD.ENABLED); see validate_svrn_config")
        self.rankers = nn.ModuleList(SalienceRanking(channels, grid)
                                     for _ in range(num_stages - 1 if self.navigated else 0))
        self.use_cross = any(self.cross[k]["enabled"] for k in ("vcc", "icc", "dcc"))
        self.unified = UnifiedLayer(reduction_dim, self.cross["dim"]) if self.use_cross else None
        if eval_feat == "unified" and self.unified is None:
            raise ValueError("MODEL.SVRN.EVAL_FEAT='unified' needs the unified layer g, built "
                             "only when a cross-space term (MODEL.SVRN.CROSS.*.ENABLED) is on")

    @classmethod
    def from_config(cls, cfg: CfgNode) -> Dict[str, Any]:
        validate_svrn_config(cfg)
        C = cfg.MODEL.SVRN
        X = C.CROSS
        return {
            "backbone": build_backbone(cfg),
            "num_classes": cfg.MODEL.HEADS.NUM_CLASSES,
            "num_stages": C.NUM_STAGES,
            "start_blocks": tuple(C.START_BLOCKS),
            "alphas": tuple(C.ALPHAS),
            "grid": C.GRID,
            "n_rounding": C.N_ROUNDING,
            "mask_mode": C.MASK_MODE,
            "accumulate_masks": C.ACCUMULATE_MASKS,
            "sim": {"name": C.SIM.NAME, "hidden": C.SIM.HIDDEN, "kernel": C.SIM.KERNEL},
            "reduction_dim": C.REDUCTION_DIM,
            "eval_feat": C.EVAL_FEAT,
            "critic_mode": C.CRITIC.MODE,
            "reward": {"enabled": C.REWARD.ENABLED, "scale": C.REWARD.SCALE,
                       "detach_feat": C.REWARD.DETACH_FEAT},
            "cross": {"dim": X.UNIFIED_DIM,
                      "vcc": {"enabled": X.VCC.ENABLED, "margin": X.VCC.MARGIN,
                              "scale": X.VCC.SCALE},
                      "icc": {"enabled": X.ICC.ENABLED, "margin": X.ICC.MARGIN,
                              "scale": X.ICC.SCALE},
                      "dcc": {"enabled": X.DCC.ENABLED, "scale": X.DCC.SCALE,
                              "normalize": X.DCC.NORMALIZE}},
            "loss_kwargs": loss_kwargs_from_cfg(cfg),
            **cls.base_kwargs(cfg),
        }

    # ------------------------------------------------------------------------------------
    def _run(self, owner, x, first, last, keep):
        """Run blocks ``first..last`` of ``owner`` (backbone or a branch); returns the block-
        ``last`` output and {b: output of block b} for the blocks in ``keep``."""
        kept = {}
        for blk in range(first, last + 1):
            for name in BLOCK_NAMES[blk]:
                x = owner[name](x) if isinstance(owner, nn.ModuleDict) else getattr(owner, name)(x)
            if blk in keep:
                kept[blk] = x
        return x, kept

    def _mask(self, t, scores, available, like):
        """M_t, 0 at the n_t cells stage t suppresses: the top-n_t of the detached S_t among the
        ``available`` cells (None = all), in training and at inference; in the ``"random"``
        ablation, n_t random available cells in training and none at inference (like dropout,
        so that test features are deterministic). ``like``: a (B, ...) tensor giving the batch,
        device and dtype when there are no scores."""
        n = self.n_cells[t]
        b, g = like.shape[0], self.grid
        if n == 0 or (self.mask_mode == "random" and not self.training):
            return like.new_ones(b, g, g)
        if self.mask_mode == "random":
            return random_suppression_mask(b, g, n, like.device, like.dtype, available=available)
        return suppression_mask(scores, n, available=available)

    def stages(self, images: torch.Tensor,
               targets: Optional[torch.Tensor] = None) -> List[Dict[str, Any]]:
        """Run the T stages on normalised images.

        Returns:
            list[dict]: per stage ``x`` (B, C, h, w) X_t, the :class:`ClassificationBlock` outputs
            and, for t < T: ``mask`` (B, G, G) M_t (0 at the n_t cells stage t chooses),
            ``applied`` (B, G, G) the mask multiplied into stage t+1's input (the union of
            M_1..M_t with ``accumulate_masks``, else M_t), ``available`` (B, G, G) the cells
            stage t could choose from (1) and, with salience navigation, ``scores`` (B, G, G)
            S_t and, in training, ``r_score`` (B, G, G).
        """
        outs = []
        owner, first, inp = self.backbone, 1, images
        kept_cells = None   # (B, G, G): 1 where no earlier stage suppressed the cell
        for t in range(self.num_stages):
            keep = {self.start_blocks[t]} if t < self.num_stages - 1 else set()
            feat5, kept = self._run(owner, inp, first, 5, keep)
            x = self.sims[t](feat5)
            out = dict(self.heads[t](x))
            out["x"] = x
            if t < self.num_stages - 1:
                scores = None
                if self.navigated:
                    ranker_in = x.detach() if self.reward["detach_feat"] else x
                    scores = out["scores"] = self.rankers[t](ranker_in)
                    if targets is not None:
                        out["r_score"] = grid_critic(
                            self.heads[t], x.detach(), targets, self.grid, stats=out["stats"],
                            reduced=out["reduced"].detach(), mode=self.critic_mode)[0]
                available = kept_cells if self.accumulate_masks else None
                mask = self._mask(t, scores, available, like=feat5).to(feat5.dtype)
                applied = mask if available is None else available * mask
                if self.accumulate_masks:
                    kept_cells = applied
                out["mask"], out["applied"] = mask, applied
                out["available"] = (torch.ones_like(mask) if available is None
                                    else available.to(mask.dtype))
                b = self.start_blocks[t]
                o = kept[b]
                inp = o * upsample_mask(applied, o.shape[-2:])
                owner, first = self.branches[t], b + 1
            outs.append(out)
        return outs

    def forward(self, batched_inputs: Union[Dict[str, Any], torch.Tensor]
                ) -> Union[Dict[str, torch.Tensor], torch.Tensor]:
        images = self.preprocess_image(batched_inputs)
        if not self.training:
            return self.descriptor(self.stages(images))
        targets = self.targets(batched_inputs)
        if targets.sum() < 0:  # FastReID's PreciseBN passes -1 targets
            targets = torch.zeros_like(targets)
        outs = self.stages(images, targets)
        return self.losses(outs, targets)

    def descriptor(self, outs: Sequence[Dict[str, Any]]) -> torch.Tensor:
        """Test descriptor (Sec. III-C, "just adding them"): (B, D) sum over the stages of
        ``eval_feat``: F_t (``gap``), F_t / ||F_t||_2 (``gap_l2``), G_t = g(F_t) (``unified``,
        Eq. 6, D = UNIFIED_DIM) or the BNNeck feature (``bn``)."""
        if self.eval_feat == "gap":
            feats = [o["feat"] for o in outs]
        elif self.eval_feat == "gap_l2":
            feats = [F.normalize(o["feat"], dim=1) for o in outs]
        elif self.eval_feat == "unified":
            feats = [self.unified(o["feat"]) for o in outs]
        else:
            feats = [o["bn_feat"] for o in outs]
        return torch.stack(feats).sum(dim=0)

    def losses(self, outs: Sequence[Dict[str, Any]],
               targets: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Eq. 13: per-stage CE + triplet, cross-space constraint and reward loss."""
        if upstream.event_storage_active():
            log_accuracy(outs[0]["logits"].detach(), targets)
        lk = self.loss_kwargs
        losses = {}
        if "CrossEntropyLoss" in lk["loss_names"]:
            ce = lk["ce"]
            losses["loss_cls"] = sum(
                cross_entropy_loss(o["logits"], targets, ce["eps"], ce["alpha"])
                for o in outs) * ce["scale"]
        if "TripletLoss" in lk["loss_names"]:
            tri = lk["tri"]
            losses["loss_triplet"] = sum(triplet_loss(o["feat"], targets, tri["margin"],
                                                      tri["norm_feat"], tri["hard_mining"],
                                                      gather=self.gather_losses)
                                         for o in outs) * tri["scale"]
        if self.use_cross:
            g = torch.stack([self.unified(o["feat"]) for o in outs])      # (T, B, L)
            X = self.cross
            if X["vcc"]["enabled"]:
                losses["loss_vcc"] = vcc_loss(g, targets, X["vcc"]["margin"],
                                            gather=self.gather_losses) * X["vcc"]["scale"]
            if X["icc"]["enabled"]:
                losses["loss_icc"] = icc_loss(g, X["icc"]["margin"],
                                            gather=self.gather_losses) * X["icc"]["scale"]
            if X["dcc"]["enabled"]:
                losses["loss_dcc"] = (dcc_loss(g, normalize=X["dcc"]["normalize"]).mean()
                                      * X["dcc"]["scale"])
        if self.navigated:
            losses["loss_reward"] = sum(reward_loss(o["scores"], o["r_score"])
                                        for o in outs[:-1]) * self.reward["scale"]
        return losses
