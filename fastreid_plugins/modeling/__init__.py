from .base import PluginMetaArch, build_backbone, loss_kwargs_from_cfg, state_dict_mismatch

__all__ = ["PluginMetaArch", "build_backbone", "loss_kwargs_from_cfg", "state_dict_mismatch"]
