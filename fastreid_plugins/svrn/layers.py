"""SVRN building blocks: spatial information mining, classification block, salience ranking,
unified layer.

Reference:
    Qian, He, Chen, Peng. Navigating Diverse Salient Features for Vehicle Re-identification.
    IEEE T-ITS 2022, Sec. III-A (Fig. 2-3) and Sec. III-B (Eq. 6).
"""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

from collections import namedtuple
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from fastreid.layers.weight_init import weights_init_classifier, weights_init_kaiming
from torch import nn

__all__ = ["SpatialInformationMining", "ClassificationBlock", "SalienceRanking", "UnifiedLayer",
           "BlockStats"]

#: Normalisation statistics of a :class:`ClassificationBlock` pass, each a detached (D,) tensor:
#: ``red_mean``/``red_var`` for the reduction BN (over B, H, W) and ``neck_mean``/``neck_var``
#: for the BNNeck (over B).
BlockStats = namedtuple("BlockStats", ["red_mean", "red_var", "neck_mean", "neck_var"])


def _hi(x):
    """Half-precision (AMP) tensors to fp32 for statistics; other dtypes unchanged."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


class SpatialInformationMining(nn.Module):
    """Spatial information mining (SIM) module: channel-wise pooling + a few conv layers.

    The paper (Sec. III-A) only says SIM applies channel-wise pooling followed by a few
    convolutional layers to a stage's block-5 output. Our concrete design (switch
    ``MODEL.SVRN.SIM.NAME``):

    * ``"spatial"`` (default): ``A = sigmoid(conv_k(relu(bn(conv_k([mean_c(F); max_c(F)])))))``,
      a (B, 1, H, W) spatial map from the channel-wise mean and max, ``X = F * A``
      (CBAM-style spatial attention, Woo et al. ECCV 2018, with one extra hidden conv);
    * ``"residual"``: the same map applied residually, ``X = F + F * A`` (cannot switch a
      location off; closer to an identity at initialisation);
    * ``"none"``: ``X = F`` (ablation).

    Args:
        name (str): ``"spatial"``, ``"residual"`` or ``"none"``.
        hidden (int): channels of the hidden conv.
        kernel (int): odd kernel size of both convs.

    Shape:
        (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, name: str = "spatial", hidden: int = 16, kernel: int = 7) -> None:
        super().__init__()
        self.name = name
        if name == "none":
            self.body = None
            return
        pad = kernel // 2
        self.body = nn.Sequential(
            nn.Conv2d(2, hidden, kernel, padding=pad, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, kernel, padding=pad),
        )
        self.body.apply(weights_init_kaiming)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        """The (B, 1, H, W) spatial map in (0, 1)."""
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.body(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.body is None:
            return x
        a = self.attention(x)
        return x * a if self.name == "spatial" else x + x * a


class ClassificationBlock(nn.Module):
    """Per-stage classification block: reduction layer, GAP, BN (BNNeck), FC classifier.

    Reference: SVRN Sec. III-A ("each stage has its own classification block") and Fig. 2.
    The reduction layer is a 1x1 conv (no bias) + BN + ReLU, i.e. a *per-location* map; the
    grid critic (:mod:`fastreid_plugins.svrn.critic`) relies on that to score all masked
    grids in closed form. The classifier is a bias-free linear layer on the BN feature and
    the BNNeck bias is frozen (Luo et al., "Bag of Tricks", CVPR-W 2019).

    Args:
        in_channels (int): C of the stage feature X_t.
        dim (int): D, the reduced dimension.
        num_classes (int): number of training identities.

    Forward:
        x (Tensor): (B, C, H, W) stage feature X_t.
        stats (BlockStats, optional): normalise with these statistics instead of the
            batch's (training) or the running ones (eval), and update no running statistics.
            The critic passes the statistics of the unmasked forward.

    Returns:
        dict: ``reduced`` (B, D, H, W) reduction output, ``feat`` (B, D) GAP feature,
        ``bn_feat`` (B, D), ``logits`` (B, num_classes), ``stats`` (:class:`BlockStats`
        actually used, detached).
    """

    def __init__(self, in_channels: int, dim: int, num_classes: int) -> None:
        super().__init__()
        self.reduce_conv = nn.Conv2d(in_channels, dim, 1, bias=False)
        self.reduce_bn = nn.BatchNorm2d(dim)
        self.neck = nn.BatchNorm1d(dim)
        self.neck.bias.requires_grad_(False)
        self.classifier = nn.Linear(dim, num_classes, bias=False)
        self.reduce_conv.apply(weights_init_kaiming)
        self.reduce_bn.apply(weights_init_kaiming)
        self.neck.apply(weights_init_kaiming)
        self.classifier.apply(weights_init_classifier)

    @staticmethod
    def _bn(bn, x, dims, stats_mean, stats_var):
        """Apply ``bn``; returns (output, mean, var) with the statistics actually used."""
        if stats_mean is not None:
            out = F.batch_norm(x, stats_mean, stats_var, bn.weight, bn.bias, False, 0.0, bn.eps)
            return out, stats_mean, stats_var
        if bn.training:
            with torch.no_grad():
                var, mean = torch.var_mean(_hi(x.detach()), dim=dims, unbiased=False)
            return bn(x), mean, var
        return bn(x), bn.running_mean, bn.running_var

    def reduce(self, x: torch.Tensor, stats: Optional[BlockStats] = None
               ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reduction layer only: (B, C, H, W) -> (B, D, H, W), plus the BN mean/var used."""
        y = self.reduce_conv(x)
        y, m, v = self._bn(self.reduce_bn, y, (0, 2, 3),
                           None if stats is None else stats.red_mean,
                           None if stats is None else stats.red_var)
        return F.relu(y), m, v

    def head(self, feat: torch.Tensor, stats: Optional[BlockStats] = None
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """BNNeck + FC on a (N, D) GAP feature: returns (bn_feat, logits, mean, var)."""
        bn_feat, m, v = self._bn(self.neck, feat, (0,),
                                 None if stats is None else stats.neck_mean,
                                 None if stats is None else stats.neck_var)
        return bn_feat, self.classifier(bn_feat), m, v

    @torch.no_grad()
    def current_stats(self, x: torch.Tensor) -> BlockStats:
        """The :class:`BlockStats` a plain forward of ``x`` would normalise with (batch
        statistics in training, running ones in eval), without updating any running statistic."""
        if not self.training:
            return BlockStats(self.reduce_bn.running_mean, self.reduce_bn.running_var,
                              self.neck.running_mean, self.neck.running_var)
        y = _hi(self.reduce_conv(x))
        rv, rm = torch.var_mean(y, dim=(0, 2, 3), unbiased=False)
        reduced = F.relu(F.batch_norm(y, rm, rv, self.reduce_bn.weight, self.reduce_bn.bias,
                                      False, 0.0, self.reduce_bn.eps))
        nv, nm = torch.var_mean(reduced.mean(dim=(2, 3)), dim=0, unbiased=False)
        return BlockStats(rm, rv, nm, nv)

    def forward(self, x: torch.Tensor, stats: Optional[BlockStats] = None) -> Dict[str, Any]:
        reduced, rm, rv = self.reduce(x, stats)
        feat = reduced.mean(dim=(2, 3))
        bn_feat, logits, nm, nv = self.head(feat, stats)
        used = BlockStats(*(t.detach() for t in (rm, rv, nm, nv)))
        return {"reduced": reduced, "feat": feat, "bn_feat": bn_feat, "logits": logits,
                "stats": used}


class SalienceRanking(nn.Module):
    """Salience ranking layer: average-pool X_t to a G x G grid, 1x1 conv to one channel.

    Reference: SVRN Sec. III-A, Fig. 3 (S_t in R^{8x8}); trained by the reward loss (Eq. 4).

    Args:
        in_channels (int): C of X_t.
        grid (int): G (8 in the paper).

    Shape:
        (B, C, H, W) with H, W divisible by G -> S_t (B, G, G).
    """

    def __init__(self, in_channels: int, grid: int = 8) -> None:
        super().__init__()
        self.grid = grid
        self.conv = nn.Conv2d(in_channels, 1, 1)
        nn.init.normal_(self.conv.weight, 0, 0.01)
        nn.init.constant_(self.conv.bias, 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_grid(x, self.grid)
        pooled = F.adaptive_avg_pool2d(x, self.grid)
        return self.conv(pooled)[:, 0]


class UnifiedLayer(nn.Module):
    """Unified layer g shared by all stages: maps each stage feature F_t to G_t (Eq. 6).

    Reference: SVRN Sec. III-B. Design (the paper gives no detail beyond "a few layers"):
    ``Linear(D, L, bias=False) -> BN -> ReLU -> Linear(L, L)``.

    Shape:
        (N, D) -> (N, L).
    """

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_dim, out_dim, bias=False), nn.BatchNorm1d(out_dim),
                                  nn.ReLU(inplace=True), nn.Linear(out_dim, out_dim))
        self.body.apply(weights_init_kaiming)
        for m in self.body:
            if isinstance(m, nn.Linear):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def check_grid(x: torch.Tensor, grid: int) -> None:
    """Raise ValueError unless the (B, C, H, W) map ``x`` splits into ``grid`` x ``grid`` cells."""
    h, w = x.shape[-2:]
    if h % grid or w % grid:
        raise ValueError(
            f"SVRN's critic / salience grid needs a feature map whose height and width are "
            f"divisible by MODEL.SVRN.GRID={grid}; got {h}x{w}. Choose INPUT.SIZE_TRAIN/"
            f"SIZE_TEST and MODEL.BACKBONE.LAST_STRIDE so that the layer4 map is a multiple of "
            f"{grid} (e.g. 256x256 with last stride 1 -> 16x16).")
