"""Backbones and weights: strict ImageNet weights from torch.hub's cache, IBN-Net's layout,
offline mode, and out-of-place input normalisation in FastReID's own meta-architectures.

Targets ``fastreid.modeling.backbones.{resnet,resnext}`` (the builders, module attribute and
``BACKBONE_REGISTRY`` entry), ``fastreid.modeling.backbones.osnet.init_pretrained_weights`` and
``fastreid.modeling.meta_arch.{Baseline,MGN}.preprocess_image``. The builders themselves are
:mod:`fastreid_plugins.modeling.pretrained`'s.
"""

from __future__ import annotations

import functools
import os

import torch

from .. import upstream
from ..errors import WeightsNotAvailableError
from ..modeling import pretrained
from .base import describe, patch_attr

__all__ = ["apply"]

describe("pretrain.strict_resolve", concern="backbones", changes_models=True,
         why="FastReID's ResNet / ResNeXt builders load ImageNet weights non-strictly (a wrong "
             "file trains a random backbone with one log line), download with gdown into their "
             "own folder, and its ResNeXt-IBN cannot load the IBN-Net file it names (IBN in "
             "layer4). The builders registered under FastReID's names (the registry refuses a "
             "second registration, so the entry is replaced) resolve PRETRAIN_PATH -> torch.hub "
             "cache -> download, load strictly and use IBN-Net's layout.")
describe("pretrain.offline", concern="backbones", changes_models=False,
         why="OSNet's ImageNet weights (Google-Drive URLs, loaded by FastReID itself) honour "
             "offline mode: a missing cached file is an error naming it instead of a download.")
describe("preprocess_image.out_of_place", concern="backbones", changes_models=True,
         why="Baseline / MGN.preprocess_image normalise the caller's tensor in place: with "
             "TEST.FLIP the flipped batch is normalised twice. Normalise out of place.")


def _patch_builders() -> None:
    from fastreid.modeling.backbones import BACKBONE_REGISTRY, resnet, resnext

    for mod, name, is_resnext in ((resnet, "build_resnet_backbone", False),
                                  (resnext, "build_resnext_backbone", True)):
        if patch_attr(mod, name, f"{mod.__name__}.{name}",
                      functools.partial(pretrained.strict_builder, resnext=is_resnext),
                      modules=["fastreid.modeling.backbones"], tag="pretrain.strict_resolve"):
            upstream.registry_replace(BACKBONE_REGISTRY, name, getattr(mod, name))


def _patch_osnet() -> None:
    from fastreid.modeling.backbones import osnet

    def wrap(original):
        @functools.wraps(original)
        def init_pretrained_weights(model, key=""):
            name = key + "_imagenet.pth"
            cached = os.path.join(pretrained.fastreid_cache_dir(), name)
            if pretrained.is_offline() and not os.path.isfile(cached):
                raise WeightsNotAvailableError(
                    f"ImageNet weights for OSNet {key!r}: {name} is not in FastReID's cache folder "
                    f"{os.path.dirname(cached)}/ and downloads are off "
                    f"({', '.join(pretrained.OFFLINE_ENV_VARS)}). Download "
                    f"{osnet.model_urls.get(key, '')} there as {name}, or set "
                    "MODEL.BACKBONE.PRETRAIN_PATH to a local copy.")
            return original(model, key)
        return init_pretrained_weights

    patch_attr(osnet, "init_pretrained_weights", "osnet.init_pretrained_weights", wrap,
               tag="pretrain.offline")


def _patch_inplace_preprocess() -> None:
    from fastreid.modeling.meta_arch import baseline, mgn

    def wrap(original):
        def preprocess_image(self, batched_inputs):
            if isinstance(batched_inputs, dict):
                images = batched_inputs["images"]
            elif isinstance(batched_inputs, torch.Tensor):
                images = batched_inputs
            else:
                raise TypeError("batched_inputs must be dict or torch.Tensor, "
                                f"but got {type(batched_inputs)}")
            images = images.to(self.device)
            return (images - self.pixel_mean) / self.pixel_std
        return preprocess_image

    for cls in (baseline.Baseline, mgn.MGN):
        patch_attr(cls, "preprocess_image", f"{cls.__name__}.preprocess_image", wrap,
                   tag="preprocess_image.out_of_place")


def apply() -> None:
    """Apply this module's patches (idempotent)."""
    _patch_builders()
    _patch_osnet()
    _patch_inplace_preprocess()
