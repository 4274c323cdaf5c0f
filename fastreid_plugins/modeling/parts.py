"""Building blocks shared by the multi-branch, part-based methods (MFG-Net and MBFN).

* :func:`split_backbone` / :func:`copy_stage`: a shared ResNet trunk and, per branch, an own copy of
  the last stage(s). ``"after_layer4"``: the papers' split (MFG-Net Sec. 2.2, "two feature
  extraction branches are built after the Conv_5 layer"; MBFN: "three feature learning branches
  ... after res_conv5 layer"): the whole ResNet is shared and the branches own only their heads.
  ``"layer3.1"``: FastReID's MGN split (``fastreid/modeling/meta_arch/mgn.py``: the trunk ends
  after ``layer3[0]``, each branch owns ``layer3[1:]`` and ``layer4``). The copies are deep copies
  of the *built* backbone, so they carry whatever weights the backbone builder loaded (ImageNet).
* :func:`split_parts` / :func:`part_bounds`: horizontal stripes or vertical columns of a feature
  map, with ``torch.tensor_split`` semantics for uneven sizes.
* :class:`ReduceConv`: the 1x1 convolution before GAP of a branch-global feature (C -> C in
  MFG-Net, reducing in MBFN); :class:`PartHead`: GAP -> optional 1x1 conv after GAP -> BNNeck ->
  classifier.
* :class:`PartBranch`: one branch = own stage copy + optional CAM + optional branch-global feature +
  optional parts (optionally weighted).
"""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import copy
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from fastreid.config import CfgNode
from fastreid.layers import any_softmax, get_norm, pooling
from fastreid.layers.weight_init import weights_init_kaiming
from torch import nn

from .. import upstream

__all__ = [
    "SPLIT_POINTS", "DIRECTIONS", "part_bounds", "split_parts", "split_backbone", "copy_stage",
    "stage_out_channels", "ReduceConv", "PartHead", "PartBranch", "edge_middle_weights",
    "has_event_storage",
]

#: Where the shared trunk ends. ``"after_layer4"``: the papers' split, the trunk is the whole
#: ResNet (through ``layer4`` = conv5) and each branch starts on its output map; ``"layer3.1"``:
#: like FastReID's MGN (each branch owns ``layer3[1:]`` and ``layer4``); ``"layer4"``: each branch
#: owns only ``layer4``.
SPLIT_POINTS = ("after_layer4", "layer3.1", "layer4")
#: ``"horizontal"``: stripes of rows (split along H); ``"vertical"``: columns (split along W).
DIRECTIONS = ("horizontal", "vertical")

_RESNET_PARTS = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def part_bounds(size: int, num_parts: int) -> List[Tuple[int, int]]:
    """Row (or column) ranges of ``num_parts`` parts of a length-``size`` axis.

    Same semantics as ``torch.tensor_split(x, num_parts, dim)``: when ``size`` is not divisible, the
    first ``size % num_parts`` parts get ``ceil(size / num_parts)`` rows and the rest
    ``floor(size / num_parts)``. (``torch.chunk``, used by FastReID's MGN, can return *fewer* parts
    than asked, e.g. 6 rows in 4 chunks gives 3 chunks of 2; ``tensor_split`` always gives exactly
    ``num_parts``.)

    Args:
        size (int): length of the axis (H for horizontal stripes, W for vertical ones).
        num_parts (int): number of parts, 1 <= num_parts <= size.

    Returns:
        list[tuple[int, int]]: ``[(start, end), ...]``, half-open, covering ``0..size``.

    Raises:
        ValueError: ``num_parts`` < 1 or > ``size``.
    """
    if not isinstance(num_parts, int) or isinstance(num_parts, bool) or num_parts < 1:
        raise ValueError(f"num_parts must be a positive int, got {num_parts!r}")
    if num_parts > size:
        raise ValueError(f"cannot split an axis of length {size} into {num_parts} parts")
    q, r = divmod(size, num_parts)
    bounds, start = [], 0
    for i in range(num_parts):
        end = start + q + (1 if i < r else 0)
        bounds.append((start, end))
        start = end
    return bounds


def split_parts(x: torch.Tensor, num_parts: int,
                direction: str = "horizontal") -> List[torch.Tensor]:
    """Split a feature map into horizontal stripes or vertical columns.

    Horizontal: part ``i`` is ``x[:, :, a_i:b_i, :]`` (an (h_i x W) stripe, top to bottom, as in
    PCB, Sun et al. ECCV 2018, and MFG-Net's "h/4 x w x c" stripes); vertical:
    ``x[:, :, :, a_i:b_i]`` (left to right; MBFN Table 2). Uneven sizes follow :func:`part_bounds`.

    Args:
        x (Tensor): (B, C, H, W) feature map.
        num_parts (int): number of parts.
        direction (str): ``"horizontal"`` or ``"vertical"``.

    Returns:
        list[Tensor]: ``num_parts`` views of shape (B, C, h_i, W) or (B, C, H, w_i).

    Raises:
        ValueError: unknown ``direction``, non-4D input, or more parts than rows/columns (the
            message says which input size to raise).
    """
    if direction not in DIRECTIONS:
        raise ValueError(f"part split direction must be one of {DIRECTIONS}, got {direction!r}")
    if x.dim() != 4:
        raise ValueError("split_parts expects a (B, C, H, W) feature map, "
                         f"got shape {tuple(x.shape)}")
    dim = 2 if direction == "horizontal" else 3
    size = x.shape[dim]
    if not isinstance(num_parts, int) or isinstance(num_parts, bool) or num_parts < 1:
        raise ValueError(f"num_parts must be a positive int, got {num_parts!r}")
    if num_parts > size:
        axis = "rows (H)" if dim == 2 else "columns (W)"
        raise ValueError(
            f"cannot split a feature map with {size} {axis} into {num_parts} {direction} parts "
            f"(feature map {tuple(x.shape)}); "
            "use a larger INPUT.SIZE_TRAIN/SIZE_TEST or fewer parts")
    return list(torch.tensor_split(x, num_parts, dim=dim))


def _check_resnet(backbone, cfg_hint="MODEL.BACKBONE.NAME"):
    missing = [n for n in _RESNET_PARTS if not hasattr(backbone, n)]
    if missing:
        raise ValueError(
            f"{cfg_hint}: the multi-branch split needs a FastReID ResNet-style backbone with "
            f"{', '.join(_RESNET_PARTS)}; {type(backbone).__name__} lacks {', '.join(missing)} "
            "(use build_resnet_backbone, build_resnext_backbone or another ResNet variant)")


def split_backbone(backbone: nn.Module,
                   split_at: str = "layer3.1") -> Tuple[nn.Sequential, nn.Sequential]:
    """Split a FastReID ResNet into a shared trunk and a per-branch stage template.

    Reference:
        Wang et al., "Learning Discriminative Features with Multiple Granularities for Person
        Re-Identification" (MGN), ACM MM 2018, Fig. 2; FastReID ``MGN.from_config``.

    Args:
        backbone (nn.Module): FastReID ResNet (``conv1, bn1, relu, maxpool, layer1..layer4``).
        split_at (str): ``"after_layer4"`` (the papers: trunk = stem..``layer4``, empty stage),
            ``"layer3.1"`` (MGN: trunk = stem..``layer3[0]``, branch stage = ``layer3[1:]`` +
            ``layer4``) or ``"layer4"`` (trunk = stem..``layer3``, stage = ``layer4``).

    Returns:
        tuple[nn.Sequential, nn.Sequential]: ``(trunk, stage)``; the stage is a *template*: give
        each branch its own :func:`copy_stage` (an empty ``nn.Sequential``, i.e. the identity, for
        ``"after_layer4"``). The trunk maps (B, 3, H, W) to (B, C3, H/16, W/16) for the MGN-style
        splits and to the (B, C, h, w) conv5 map for ``"after_layer4"``. Build the backbone (and
        load its pretrained weights) *before* splitting: trunk and stage are the backbone's own
        modules, and :func:`copy_stage` copies their current weights.

    Raises:
        ValueError: unknown ``split_at`` or a backbone that is not ResNet-like.
    """
    if split_at not in SPLIT_POINTS:
        raise ValueError(f"split point must be one of {SPLIT_POINTS}, got {split_at!r}")
    _check_resnet(backbone)
    stem = [backbone.conv1, backbone.bn1, backbone.relu, backbone.maxpool, backbone.layer1,
            backbone.layer2]
    if split_at == "after_layer4":
        trunk = nn.Sequential(*stem, backbone.layer3, backbone.layer4)
        stage = nn.Sequential()
    elif split_at == "layer3.1":
        trunk = nn.Sequential(*stem, backbone.layer3[0])
        stage = nn.Sequential(nn.Sequential(*list(backbone.layer3)[1:]), backbone.layer4)
    else:
        trunk = nn.Sequential(*stem, backbone.layer3)
        stage = nn.Sequential(backbone.layer4)
    return trunk, stage


def copy_stage(stage: nn.Sequential, stride_one: bool = False) -> nn.Sequential:
    """An independent deep copy of a branch stage (weights copied, never shared).

    Args:
        stage (nn.Sequential): template from :func:`split_backbone`; its last element is ``layer4``
            (or it is empty, for the ``"after_layer4"`` split).
        stride_one (bool): set every stride-2 convolution in the first block of ``layer4`` to stride
            1 (conv and its downsample shortcut), keeping the weights; like MGN's part branches
            (``res_p_conv5``), this keeps the spatial resolution for the part split. No effect on
            an empty stage (the shared ``layer4`` keeps ``MODEL.BACKBONE.LAST_STRIDE``).

    Returns:
        nn.Sequential: the copy.
    """
    s = copy.deepcopy(stage)
    if stride_one and len(s):
        for m in s[-1][0].modules():
            if isinstance(m, nn.Conv2d) and m.stride != (1, 1):
                m.stride = (1, 1)
    return s


@torch.no_grad()
def stage_out_channels(trunk: nn.Module, stage: nn.Module, in_channels: int = 3) -> int:
    """Number of output channels of ``stage(trunk(x))`` (a tiny eval-mode forward; no state
    changes)."""
    modes = [(m, m.training) for m in (trunk, stage)]
    try:
        trunk.eval()
        stage.eval()
        p = next(trunk.parameters())
        y = stage(trunk(torch.zeros(1, in_channels, 64, 64, device=p.device, dtype=p.dtype)))
    finally:
        for m, t in modes:
            m.train(t)
    return int(y.shape[1])


def has_event_storage() -> bool:
    """True inside FastReID's ``EventStorage`` context (the trainer), where ``log_accuracy``
    works."""
    return upstream.event_storage_active()


class ReduceConv(nn.Sequential):
    """1x1 convolution before GAP on a branch's feature map: conv1x1 (C -> C_r, no bias) -> norm
    -> ReLU.

    MFG-Net keeps the channels (C_r = C: "to greatly increase the non-linear characteristics while
    keeping the scale of the feature map unchanged"); MBFN reduces them ("This can not only reduce
    the number of channels, but also simplify calculations later").

    Reference:
        Xu et al., MFG-Net, Array 14 (2022), Sec. 2.2 (global branch); Rong et al., MBFN, Sci. Rep.
        11, 20210 (2021), "Multi-branch network architecture" (local branches' global feature).

    Args:
        in_channels (int): C.
        out_channels (int): C_r.
        norm (str): FastReID norm name (``MODEL.HEADS.NORM``).

    Shape:
        (B, C, H, W) -> (B, C_r, H, W)
    """

    def __init__(self, in_channels: int, out_channels: int, norm: str = "BN") -> None:
        super().__init__(nn.Conv2d(in_channels, out_channels, 1, bias=False),
                         get_norm(norm, out_channels), nn.ReLU(inplace=True))
        for m in self:  # not self.apply: FastReID's init matches "Conv" in this class's own name
            weights_init_kaiming(m)


class PartHead(nn.Module):
    """Pooling -> optional 1x1 conv after pooling -> BNNeck -> classifier, for one feature or part.

    ``f = conv1x1(GAP(x))`` (``f = GAP(x)`` when ``embed_dim`` is 0), ``n = BN(f)`` (BNNeck, bias
    frozen), ``logits = cls_layer(W n)`` with FastReID's classifier layers (``Linear``,
    ``CosSoftmax``, ``ArcSoftmax``, ``CircleSoftmax``: ``MODEL.HEADS.CLS_LAYER``). Like FastReID's
    ``EmbeddingHead``, but the triplet feature is the output of the 1x1 conv (``NECK_FEAT
    "before"``), not the pooled input of it.

    Reference:
        Luo et al., "Bag of Tricks and a Strong Baseline for Deep Person Re-identification",
        CVPR-W 2019 (BNNeck); Sun et al., "Beyond Part Models" (PCB), ECCV 2018 (per-part 1x1 conv
        reduction + per-part classifier).

    Args:
        in_channels (int): C of the input map.
        num_classes (int): number of training identities.
        embed_dim (int): output dim of the 1x1 conv after pooling; 0 = no conv (D = C).
        pool_type (str): FastReID pooling layer name (``MODEL.HEADS.POOL_LAYER``).
        cls_type (str): FastReID classifier (``MODEL.HEADS.CLS_LAYER``).
        scale (float), margin (float): classifier scale / margin (``MODEL.HEADS.SCALE/MARGIN``).
        norm (str): BNNeck norm (``MODEL.HEADS.NORM``).
        with_bnneck (bool): use the BNNeck (``MODEL.HEADS.WITH_BNNECK``).
        neck_feat (str): training feature for metric losses, ``"before"`` (``f``) or ``"after"``
            (``n``).

    Shape:
        - Input: (B, C, h, w)
        - Training output: dict with ``cls_outputs`` (B, num_classes) (the classifier outputs the CE
          loss uses), ``pred_class_logits`` (B, num_classes), ``features`` (B, D)
        - Eval output: (B, D), the BNNeck feature ``n``.

    Raises:
        ValueError: unknown ``pool_type``/``cls_type``/``neck_feat`` or ``num_classes`` < 0;
            training forward with 0 classes (``num_classes`` 0 builds an empty classifier, like
            FastReID's ``NUM_CLASSES: 0``, which the trainer or ``--eval-only`` weight loading fills
            in).
    """

    def __init__(self, in_channels: int, num_classes: int, embed_dim: int = 0,
                 pool_type: str = "GlobalAvgPool", cls_type: str = "Linear", scale: float = 1.0,
                 margin: float = 0.0, norm: str = "BN", with_bnneck: bool = True,
                 neck_feat: str = "before") -> None:
        super().__init__()
        if not hasattr(pooling, pool_type):
            raise ValueError(f"MODEL.HEADS.POOL_LAYER={pool_type!r} is not a FastReID pooling "
                             f"layer ({', '.join(pooling.__all__)})")
        if not hasattr(any_softmax, cls_type):
            raise ValueError(f"MODEL.HEADS.CLS_LAYER={cls_type!r} is not a FastReID classifier "
                             f"({', '.join(any_softmax.__all__)})")
        if neck_feat not in ("before", "after"):
            raise ValueError("MODEL.HEADS.NECK_FEAT must be 'before' or 'after', "
                             f"got {neck_feat!r}")
        if int(num_classes) < 0:
            raise ValueError(f"MODEL.HEADS.NUM_CLASSES must be >= 0, got {num_classes}")
        self.pool = getattr(pooling, pool_type)()
        self.embed = (nn.Conv2d(in_channels, embed_dim, 1, bias=False) if embed_dim > 0
                      else nn.Identity())
        self.out_dim = embed_dim if embed_dim > 0 else in_channels
        self.bnneck = (get_norm(norm, self.out_dim, bias_freeze=True) if with_bnneck
                       else nn.Identity())
        self.neck_feat = neck_feat
        self.weight = nn.Parameter(torch.empty(num_classes, self.out_dim))
        self.cls_layer = getattr(any_softmax, cls_type)(num_classes, scale, margin)
        self.embed.apply(weights_init_kaiming)
        self.bnneck.apply(weights_init_kaiming)
        if num_classes > 0:
            nn.init.normal_(self.weight, std=0.01)

    @classmethod
    def from_cfg(cls, cfg: CfgNode, in_channels: int, embed_dim: int = 0) -> "PartHead":
        """Build with the classifier/BNNeck settings of ``cfg.MODEL.HEADS``."""
        h = cfg.MODEL.HEADS
        return cls(in_channels, h.NUM_CLASSES, embed_dim, pool_type=h.POOL_LAYER,
                   cls_type=h.CLS_LAYER, scale=h.SCALE, margin=h.MARGIN, norm=h.NORM,
                   with_bnneck=h.WITH_BNNECK, neck_feat=h.NECK_FEAT)

    def forward(self, x: torch.Tensor, targets: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, Dict[str, torch.Tensor]]:
        f = self.embed(self.pool(x))
        n = self.bnneck(f)[..., 0, 0]
        if not self.training:
            return n
        if self.weight.shape[0] == 0:
            raise ValueError("this classifier has 0 classes (MODEL.HEADS.NUM_CLASSES 0 = 'from the "
                             "training set', set by the trainer): build the model through the "
                             "trainer or set MODEL.HEADS.NUM_CLASSES for training")
        if self.cls_layer.__class__.__name__ == "Linear":
            logits = F.linear(n, self.weight)
        else:
            logits = F.linear(F.normalize(n), F.normalize(self.weight))
        cls_outputs = self.cls_layer(logits.clone(), targets)
        return {
            "cls_outputs": cls_outputs,
            "pred_class_logits": logits * self.cls_layer.s,
            "features": f[..., 0, 0] if self.neck_feat == "before" else n,
        }


def edge_middle_weights(num_parts: int, alpha: float, beta: float) -> List[float]:
    """Part weights: ``alpha`` for the first and last part, ``beta`` for every part in between.

    MBFN's Local Branch 2 weights its top and bottom parts by alpha = 0.3 and its middle part by
    beta = 0.4 (Rong et al. 2021, Fig. 4); this generalises it to any number of parts.

    Returns:
        list[float]: e.g. ``edge_middle_weights(3, 0.3, 0.4) == [0.3, 0.4, 0.3]``.
    """
    return [alpha if i in (0, num_parts - 1) else beta for i in range(num_parts)]


class PartBranch(nn.Module):
    """One branch of a multi-branch network: own stage, optional CAM, branch-global and part
    features.

    ``y = stage(x)``; ``y = CAM(y)`` if a CAM is given; the branch-global feature is
    ``global_head(reduce(y))`` (``reduce`` = 1x1 conv before GAP, the head's 1x1 conv after GAP);
    the parts are ``part_heads[i](split_parts(y)[i])``.

    Part weights ``w_i`` (optional) multiply the part features: in training the weighted part
    features, fused by ``part_fusion`` (``"concat"``: ``[w_1 f_1, ..., w_P f_P]``; ``"sum"``:
    ``sum_i w_i f_i``), form ``part_feature`` (the triplet input); at test time the same is done to
    the BNNeck part features. ``weight_at`` says where the weights act: ``"both"``, ``"train"``
    (only the training ``part_feature``) or ``"test"`` (only the retrieval descriptor). The
    per-part CE is always computed on the unweighted part (a scale before the BNNeck would cancel).

    Reference:
        Rong et al., Sci. Rep. 11, 20210 (2021), Fig. 3-5 (branches, weighting, CAM); Xu et al.,
        MFG-Net, Array 2022 (global and local branch); MGN (per-branch stage copies).

    Args:
        stage (nn.Module): the branch's own stage, (B, C_in, H, W) -> (B, C, h, w).
        cam (nn.Module or None): channel attention on the stage output.
        reduce (nn.Module or None): 1x1 conv before GAP for the branch-global feature.
        global_head (PartHead or None): head of the branch-global feature.
        part_heads (list[PartHead]): one head per part (empty: no parts).
        direction (str): part split direction, see :func:`split_parts`.
        part_weights (list[float] or None): one weight per part.
        weight_at (str): ``"both"``, ``"train"`` or ``"test"``.
        part_fusion (str): ``"concat"`` or ``"sum"``.

    Shape:
        - Input: (B, C_in, H, W) trunk features.
        - Training output: dict ``{"global": head dict or None, "parts": [head dicts],
          "part_feature": (B, P*D) / (B, D) or None}``.
        - Eval output: (B, D_branch) = concat(global feature, fused part features).

    Raises:
        ValueError: a branch with neither a global head nor parts, wrong number of weights, or an
            unknown ``weight_at`` / ``part_fusion``.
    """

    def __init__(self, stage: nn.Module, cam: Optional[nn.Module] = None,
                 reduce: Optional[nn.Module] = None, global_head: Optional[PartHead] = None,
                 part_heads: Sequence[PartHead] = (), direction: str = "horizontal",
                 part_weights: Optional[Sequence[float]] = None, weight_at: str = "both",
                 part_fusion: str = "concat") -> None:
        super().__init__()
        if global_head is None and len(part_heads) == 0:
            raise ValueError("a branch needs a global head or at least one part")
        if direction not in DIRECTIONS:
            raise ValueError(f"part split direction must be one of {DIRECTIONS}, got {direction!r}")
        if weight_at not in ("both", "train", "test"):
            raise ValueError(f"weight_at must be 'both', 'train' or 'test', got {weight_at!r}")
        if part_fusion not in ("concat", "sum"):
            raise ValueError(f"part_fusion must be 'concat' or 'sum', got {part_fusion!r}")
        self.stage = stage
        self.cam = cam if cam is not None else nn.Identity()
        self.reduce = reduce if reduce is not None else nn.Identity()
        self.global_head = global_head
        self.part_heads = nn.ModuleList(part_heads)
        self.direction = direction
        self.weight_at = weight_at
        self.part_fusion = part_fusion
        if part_weights is not None:
            if len(part_weights) != len(part_heads):
                raise ValueError(f"{len(part_weights)} part weights given for "
                                 f"{len(part_heads)} parts")
            self.register_buffer("part_weights", torch.tensor([float(w) for w in part_weights]),
                                 False)
        else:
            self.part_weights = None

    @property
    def num_parts(self):
        return len(self.part_heads)

    @property
    def out_dim(self):
        """D_branch, the dimension of this branch's test descriptor."""
        d = self.global_head.out_dim if self.global_head is not None else 0
        if self.num_parts:
            pd = [h.out_dim for h in self.part_heads]
            d += pd[0] if self.part_fusion == "sum" else sum(pd)
        return d

    def fuse_parts(self, feats: List[torch.Tensor], weighted: bool) -> torch.Tensor:
        """Weight (if ``weighted`` and weights exist) and fuse a list of (B, D_i) part features."""
        if weighted and self.part_weights is not None:
            feats = [f * w for f, w in zip(feats, self.part_weights)]
        if self.part_fusion == "sum":
            return torch.stack(feats, 0).sum(0)
        return torch.cat(feats, 1)

    def feature_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) trunk features -> (B, C, h, w) branch map (after the CAM if any)."""
        return self.cam(self.stage(x))

    def forward(self, x: torch.Tensor, targets: Optional[torch.Tensor] = None
                ) -> Union[torch.Tensor, Dict[str, Any]]:
        y = self.feature_map(x)
        parts = split_parts(y, self.num_parts, self.direction) if self.num_parts else []
        if self.training:
            g = self.global_head(self.reduce(y), targets) if self.global_head is not None else None
            p = [h(t, targets) for h, t in zip(self.part_heads, parts)]
            pf = (self.fuse_parts([o["features"] for o in p], self.weight_at in ("both", "train"))
                  if p else None)
            return {"global": g, "parts": p, "part_feature": pf}
        out = []
        if self.global_head is not None:
            out.append(self.global_head(self.reduce(y)))
        if parts:
            out.append(self.fuse_parts([h(t) for h, t in zip(self.part_heads, parts)],
                                       self.weight_at in ("both", "test")))
        return torch.cat(out, 1)
