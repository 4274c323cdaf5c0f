"""Common base of the plugins' meta-architectures."""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

from typing import Any, Dict, Sequence, Union

import torch
from fastreid.config import CfgNode
from fastreid.modeling.backbones import build_backbone as _fastreid_build_backbone
from torch import nn

from ..config import require_plugins_config

__all__ = ["PluginMetaArch", "build_backbone", "loss_kwargs_from_cfg", "state_dict_mismatch"]


def state_dict_mismatch(own: Dict[str, Any], state: Dict[str, Any], what: str = "model",
                        limit: int = 30) -> str:
    """Describe how a checkpoint's state dict differs from a module's, for an error message.

    Args:
        own (dict): the module's ``state_dict()``.
        state (dict): the checkpoint's (already key-mapped) state dict.
        what (str): how the module is called in the message ("model", "SEM", ...).
        limit (int): keys listed per category before "... and N more".

    Returns:
        str: "" when names and shapes agree, else the missing, unexpected and wrongly shaped keys.
    """
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs {what} {tuple(own[k].shape)}"
                    for k in set(own) & set(state)
                    if hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape))

    def fmt(title, keys):
        if not keys:
            return ""
        more = f"\n    ... and {len(keys) - limit} more" if len(keys) > limit else ""
        return f"\n  {title} ({len(keys)}):\n    " + "\n    ".join(keys[:limit]) + more
    return (fmt("missing in checkpoint", missing) + fmt("unexpected in checkpoint", unexpected)
            + fmt("shape mismatch", shapes))


def build_backbone(cfg: CfgNode) -> nn.Module:
    """FastReID's ``build_backbone``; ResNet / ResNeXt weights come from
    :mod:`fastreid_plugins.modeling.pretrained` (``PRETRAIN_PATH`` -> torch.hub cache -> download,
    strict loading), which :mod:`fastreid_plugins.patches.backbones` registers under FastReID's
    builder names.

    Raises:
        WeightsNotAvailableError (a ``FileNotFoundError``): ``MODEL.BACKBONE.PRETRAIN`` is True and
            no file was found or fetched (the message names file, URL, cache folder, config key).
        WeightsMismatchError (a ``ValueError``): the file does not fit the backbone.
    """
    return _fastreid_build_backbone(cfg)


def loss_kwargs_from_cfg(cfg: CfgNode) -> Dict[str, Any]:
    """FastReID's CE / triplet loss settings as a dict (``MODEL.LOSSES``)."""
    L = cfg.MODEL.LOSSES
    return {
        "loss_names": tuple(L.NAME),
        "ce": {"eps": L.CE.EPSILON, "alpha": L.CE.ALPHA, "scale": L.CE.SCALE},
        "tri": {"margin": L.TRI.MARGIN, "norm_feat": L.TRI.NORM_FEAT,
                "hard_mining": L.TRI.HARD_MINING, "scale": L.TRI.SCALE},
    }


class PluginMetaArch(nn.Module):
    """Base for the plugins' meta-architectures: pixel normalisation and the input contract.

    ``forward`` accepts FastReID's batch dict (``images`` (B, 3, H, W) in [0, 255], and in
    training ``targets`` (B,)) or a bare image tensor (so ONNX export works). Subclasses return
    ``{"loss_*": tensor}`` in training and a (B, D) feature tensor in eval mode.

    Unlike FastReID's ``Baseline.preprocess_image``, normalisation is out of place: the caller's
    batch is never modified (FastReID's flip test otherwise normalises the flipped batch twice).

    ``gather_losses`` (``DIST.GATHER_LOSSES``): whether the pair-based losses gather the batch
    of every DDP rank; subclasses pass it to each such loss as its ``gather`` argument (see
    :mod:`fastreid_plugins.distributed.gather`). No effect without a multi-rank process group.
    """

    def __init__(self, pixel_mean: Sequence[float], pixel_std: Sequence[float],
                 gather_losses: bool = True) -> None:
        super().__init__()
        self.gather_losses = bool(gather_losses)
        self.register_buffer("pixel_mean",
                             torch.tensor(pixel_mean, dtype=torch.float32).view(1, -1, 1, 1), False)
        self.register_buffer("pixel_std",
                             torch.tensor(pixel_std, dtype=torch.float32).view(1, -1, 1, 1), False)

    @classmethod
    def base_kwargs(cls, cfg: CfgNode) -> Dict[str, Any]:
        """The base's ``__init__`` arguments from ``cfg`` (for a subclass's ``from_config``):
        ``MODEL.PIXEL_MEAN`` / ``PIXEL_STD`` and ``DIST.GATHER_LOSSES``.

        Raises:
            ConfigError: ``cfg`` was built without the plugin keys
                (:func:`fastreid_plugins.config.require_plugins_config`).
        """
        require_plugins_config(cfg, f"MODEL.META_ARCHITECTURE {cls.__name__}")
        return {"pixel_mean": cfg.MODEL.PIXEL_MEAN, "pixel_std": cfg.MODEL.PIXEL_STD,
                "gather_losses": cfg.DIST.GATHER_LOSSES}

    @property
    def device(self):
        return self.pixel_mean.device

    def preprocess_image(self, batched_inputs: Union[Dict[str, Any], torch.Tensor]
                         ) -> torch.Tensor:
        """(B, 3, H, W) images in [0, 255] -> normalised float tensor on the model's device.

        Raises:
            TypeError: input is neither a dict with ``images`` nor a tensor.
            ValueError: the tensor is not (B, 3, H, W).
        """
        if isinstance(batched_inputs, dict):
            if "images" not in batched_inputs:
                raise TypeError("batched_inputs dict has no 'images' key "
                                f"(keys: {sorted(batched_inputs)})")
            images = batched_inputs["images"]
        elif isinstance(batched_inputs, torch.Tensor):
            images = batched_inputs
        else:
            raise TypeError("batched_inputs must be a dict or a torch.Tensor, "
                            f"got {type(batched_inputs).__name__}")
        if images.dim() != 4 or images.shape[1] != self.pixel_mean.shape[1]:
            raise ValueError(f"images must be (B, {self.pixel_mean.shape[1]}, H, W), "
                             f"got {tuple(images.shape)}")
        images = images.to(self.device, torch.float32)
        return (images - self.pixel_mean) / self.pixel_std

    def targets(self, batched_inputs: Union[Dict[str, Any], torch.Tensor]) -> torch.Tensor:
        """The (B,) int64 identity labels of a training batch.

        Raises:
            KeyError: training input without ``targets``.
        """
        if not isinstance(batched_inputs, dict) or "targets" not in batched_inputs:
            raise KeyError("Training needs a batch dict with 'targets' (vehicle ID labels).")
        return batched_inputs["targets"].to(self.device).long()
