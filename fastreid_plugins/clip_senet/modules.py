"""CLIP-SENet building blocks: AFEM (Eq. 4), feature fusion (Eq. 3, Eq. 5), CV embeddings (SIE)."""

from typing import Optional, Sequence, Union

import torch
from torch import nn

__all__ = ["AFEM", "FeatureFusion", "CameraViewEmbedding", "COMBINE_MODES", "AFEM_WEIGHT_SHAPES",
           "VIEWPOINT_GROUPS"]

COMBINE_MODES = ("sum", "concat")
AFEM_WEIGHT_SHAPES = ("group", "channel")

#: Groupings of VeRi's 8 orientation labels (Wang et al., ICCV 2017: 0 front, 1 rear, 2 left,
#: 3 left front, 4 left rear, 5 right, 6 right front, 7 right rear). "paper4" is the four
#: viewpoints CLIP-SENet Sec. IV-A names ("front, front side, rear side, and rear"): 0 front,
#: 1 front side, 2 rear side, 3 rear. Pure side views (left, right) belong to none of the four
#: and map to -1, the learnable "unknown" embedding.
VIEWPOINT_GROUPS = {
    "paper4": (0, 3, -1, 1, 2, -1, 1, 2),
}


class AFEM(nn.Module):
    r"""Adaptive Fine-grained Enhancement Module.

    .. math::
        h = \mathrm{ReLU}(\mathrm{BN}(W f_{clip} + b)), \qquad
        f_{afem} = h + [\,w_1 h_1;\ w_2 h_2;\ \dots;\ w_G h_G\,]

    where :math:`h` is split into :math:`G` equal groups :math:`h_g` along the channels and each
    group has one learnable scalar weight :math:`w_g \sim \mathcal{N}(0, 1)` at initialisation
    (``weight_shape="group"``, the default: the paper "calculate[s] feature group importance");
    ``weight_shape="channel"`` gives each group a weight vector :math:`w_g \in R^{D/G}` (one
    weight per channel, each ~ N(0, 1)). The weighted groups are added element-wise to :math:`h`.

    Note: Eq. 4 itself was lost in the text we have; both readings are element-wise rescalings of
    the ReLU output, :math:`(1 + w) \odot h`. Where :math:`1 + w > 0` that equals rescaling BN's
    gamma / beta (ReLU is positively homogeneous); entries with :math:`1 + w < 0` (about 16 % at
    N(0, 1) initialisation) flip the sign, which BN + ReLU alone cannot express.

    Reference:
        CLIP-SENet (Lu et al., arXiv:2502.16815, 2025), Sec. III, Eq. 4 (default G = 32;
        Table V varies G from 4 to 128).

    Args:
        in_dim (int): dimension of f_clip.
        out_dim (int): dimension of h (= the fused feature's, so Eq. 5 can add them).
        groups (int): G, must divide ``out_dim``.
        weight_shape (str): "group" (G scalars) or "channel" (G x out_dim/G weights).

    Shape:
        - Input: (B, in_dim)
        - Output: (B, out_dim)
        - ``group_weight``: (G,) or (G, out_dim / G)

    Raises:
        ValueError: ``groups`` < 1 or does not divide ``out_dim``; unknown ``weight_shape``.
    """

    def __init__(self, in_dim: int, out_dim: int, groups: int = 32,
                 weight_shape: str = "group") -> None:
        super().__init__()
        if groups < 1 or out_dim % groups != 0:
            raise ValueError(f"AFEM groups G={groups} must be >= 1 and divide the feature "
                             f"dimension {out_dim} (MODEL.CLIPSENET.AFEM.GROUPS)")
        if weight_shape not in AFEM_WEIGHT_SHAPES:
            raise ValueError(f"MODEL.CLIPSENET.AFEM.WEIGHT_SHAPE={weight_shape!r} must be one of "
                             f"{AFEM_WEIGHT_SHAPES}")
        self.groups = groups
        self.weight_shape = weight_shape
        self.fc = nn.Linear(in_dim, out_dim)
        self.bn = nn.BatchNorm1d(out_dim)
        self.relu = nn.ReLU(inplace=True)
        shape = (groups,) if weight_shape == "group" else (groups, out_dim // groups)
        self.group_weight = nn.Parameter(torch.randn(shape))

    def enhance(self, h: torch.Tensor) -> torch.Tensor:
        """``h + w_g * h_g`` per group (scalar or per-channel ``w_g``): (B, D) -> (B, D)."""
        if self.weight_shape == "group":
            w = self.group_weight.repeat_interleave(h.shape[1] // self.groups)
        else:
            w = self.group_weight.reshape(-1)
        return h + h * w

    def forward(self, f_clip: torch.Tensor) -> torch.Tensor:
        return self.enhance(self.relu(self.bn(self.fc(f_clip))))

    def extra_repr(self) -> str:
        return f"groups={self.groups}, weight_shape={self.weight_shape}"


class FeatureFusion(nn.Module):
    r"""Eq. 3 fusion of the appearance and semantic features, and Eq. 5's combination with AFEM.

    .. math::
        f_{fuse} = \mathrm{FC}([f_{cnn}; f_{clip}]), \qquad
        f = f_{afem} + f_{fuse}\ (\text{sum})\ \text{or}\ [f_{afem}; f_{fuse}]\ (\text{concat})

    Reference:
        CLIP-SENet (Lu et al., arXiv:2502.16815, 2025), Eq. 3 and Eq. 5.

    Args:
        cnn_dim (int): dimension of f_cnn (2048 for ResNeXt101).
        clip_dim (int): dimension of f_clip.
        out_dim (int): dimension of f_fuse.
        combine (str): ``"sum"`` (default in the paper) or ``"concat"``.

    Raises:
        ValueError: unknown ``combine``.
    """

    def __init__(self, cnn_dim: int, clip_dim: int, out_dim: int, combine: str = "sum") -> None:
        super().__init__()
        if combine not in COMBINE_MODES:
            raise ValueError(f"MODEL.CLIPSENET.COMBINE={combine!r} must be one of {COMBINE_MODES}")
        self.fc = nn.Linear(cnn_dim + clip_dim, out_dim)
        self.combine = combine
        self.out_dim = out_dim

    def fuse(self, f_cnn: torch.Tensor, f_clip: torch.Tensor) -> torch.Tensor:
        """Eq. 3: (B, cnn_dim), (B, clip_dim) -> (B, out_dim)."""
        return self.fc(torch.cat([f_cnn, f_clip], dim=1))

    def combined_dim(self, with_afem: bool = True) -> int:
        return 2 * self.out_dim if (with_afem and self.combine == "concat") else self.out_dim

    def forward(self, f_cnn: torch.Tensor, f_clip: torch.Tensor,
                f_afem: Optional[torch.Tensor] = None) -> torch.Tensor:
        f_fuse = self.fuse(f_cnn, f_clip)
        if f_afem is None:
            return f_fuse
        if self.combine == "sum":
            return f_afem + f_fuse
        return torch.cat([f_afem, f_fuse], dim=1)


class CameraViewEmbedding(nn.Module):
    r"""Learnable camera and viewpoint embeddings (CV), each switchable.

    ``e = lambda * (E_cam[c] + E_view[v])``: one embedding per camera and one per viewpoint, plus a
    dedicated learnable "unknown" entry in each table that negative indices (and absent side
    information, e.g. a bare image tensor) map to. Initialised like TransReID's SIE
    (truncated normal, std 0.02).

    Reference:
        - He et al., "TransReID: Transformer-based Object Re-Identification", ICCV 2021, Sec. 3.3
          (Side Information Embedding, Eq. 6-7; lambda = 3 there).
        - CLIP-SENet (Lu et al., 2025), camera and viewpoint embeddings.

    Args:
        dim (int): embedding dimension.
        num_cameras (int): cameras 0..num_cameras-1 (index ``num_cameras`` = unknown).
        num_viewpoints (int): viewpoints 0..num_viewpoints-1 (index ``num_viewpoints`` = unknown).
        camera (bool): use camera embeddings.
        viewpoint (bool): use viewpoint embeddings.
        coe (float): lambda.
        view_map (Sequence[int] or None): maps the dataset's viewpoint labels ``0..len-1`` to
            table rows (``-1`` = unknown), e.g. ``VIEWPOINT_GROUPS["paper4"]``; None = identity.

    Shape:
        - camids, viewids: (B,) int, -1 = unknown
        - output: (B, dim)

    Raises:
        ValueError: both switches off, non-positive table size, a ``view_map`` entry outside
            ``[-1, num_viewpoints)``, or (in forward) an index outside ``[-1, num)``.
    """

    def __init__(self, dim: int, num_cameras: int, num_viewpoints: int, camera: bool = True,
                 viewpoint: bool = True, coe: float = 3.0,
                 view_map: Optional[Sequence[int]] = None) -> None:
        super().__init__()
        if not (camera or viewpoint):
            raise ValueError("CameraViewEmbedding needs camera and/or viewpoint enabled")
        self.dim, self.coe = dim, float(coe)
        self.num_cameras, self.num_viewpoints = int(num_cameras), int(num_viewpoints)
        self.camera_embed = self._table("NUM_CAMERAS", self.num_cameras, dim) if camera else None
        self.view_embed = self._table("NUM_VIEWPOINTS", self.num_viewpoints, dim) \
            if viewpoint else None
        if view_map is not None:
            bad = [v for v in view_map if not -1 <= int(v) < self.num_viewpoints]
            if bad:
                raise ValueError(f"viewpoint grouping {tuple(view_map)} has rows {bad} outside "
                                 f"[-1, {self.num_viewpoints}): set MODEL.CLIPSENET.CV."
                                 f"NUM_VIEWPOINTS to {max(view_map) + 1}")
            view_map = torch.as_tensor(list(view_map), dtype=torch.long)
        self.register_buffer("view_map", view_map, persistent=False)

    @staticmethod
    def _table(key, n, dim):
        if n < 1:
            raise ValueError(f"MODEL.CLIPSENET.CV.{key} must be >= 1 when that embedding is on, "
                             f"got {n}")
        table = nn.Parameter(torch.zeros(n + 1, dim))  # last row: unknown
        nn.init.trunc_normal_(table, std=0.02)
        return table

    @staticmethod
    def _index(ids, n, what, batch_size, device):
        if ids is None:
            return torch.full((batch_size,), n, dtype=torch.long, device=device)
        ids = torch.as_tensor(ids, device=device).long().view(-1)
        if ids.numel() != batch_size:
            raise ValueError(f"{what} has {ids.numel()} entries for a batch of {batch_size}")
        bad = (ids < -1) | (ids >= n)
        if bool(bad.any()):
            raise ValueError(f"{what} {sorted(set(ids[bad].tolist()))} outside [0, {n}) (-1 = "
                             f"unknown); raise MODEL.CLIPSENET.CV.NUM_{what.upper()}S")
        return torch.where(ids < 0, torch.full_like(ids, n), ids)

    def forward(self, batch_size: int,
                camids: Optional[Union[torch.Tensor, Sequence[int]]] = None,
                viewids: Optional[Union[torch.Tensor, Sequence[int]]] = None) -> torch.Tensor:
        device = (self.camera_embed if self.camera_embed is not None else self.view_embed).device
        out = 0
        if self.camera_embed is not None:
            out = out + self.camera_embed[self._index(camids, self.num_cameras, "camera",
                                                      batch_size, device)]
        if self.view_embed is not None:
            if self.view_map is not None and viewids is not None:
                ids = self._index(viewids, len(self.view_map), "viewpoint", batch_size, device)
                ids = torch.where(ids < len(self.view_map),
                                  self.view_map[ids.clamp(max=len(self.view_map) - 1)],
                                  torch.full_like(ids, -1))
                viewids = ids  # grouped rows, -1 = unknown
            out = out + self.view_embed[self._index(viewids, self.num_viewpoints, "viewpoint",
                                                    batch_size, device)]
        return self.coe * out

    def extra_repr(self) -> str:
        cams = self.num_cameras if self.camera_embed is not None else "off"
        views = self.num_viewpoints if self.view_embed is not None else "off"
        grouped = "" if self.view_map is None else f" (grouped from {len(self.view_map)})"
        return f"dim={self.dim}, cameras={cams}, viewpoints={views}{grouped}, coe={self.coe}"
