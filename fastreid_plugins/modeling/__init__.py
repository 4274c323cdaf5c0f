from .base import PluginMetaArch, build_backbone, loss_kwargs_from_cfg

__all__ = ["PluginMetaArch", "build_backbone", "loss_kwargs_from_cfg"]
