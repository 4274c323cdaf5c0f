"""MFG-Net (Xu et al., "Joint Multiple Fine-grained feature for Vehicle Re-Identification",
Array 2022) as a FastReID project: ``META_ARCHITECTURE: MFGNet`` + :func:`add_mfgnet_config`."""

from .. import data  # noqa: F401  (registers the plugins' datasets)
from ..engine import PluginTrainer
from ..patches import apply as _apply_patches
from .config import add_mfgnet_config, validate_mfgnet_config
from .meta_arch import MFGNet

__all__ = ["add_mfgnet_config", "validate_mfgnet_config", "MFGNet", "add_config",
           "validate_config", "Trainer"]

#: what ``fastreid_plugins.method.METHODS["mfgnet"]`` resolves (its record is there)
add_config, validate_config, Trainer = add_mfgnet_config, validate_mfgnet_config, PluginTrainer

# FastReID's project idiom: importing the method package registers it (above) and patches
# FastReID as the method needs (every patch; idempotent, see fastreid_plugins.patches)
_apply_patches()
