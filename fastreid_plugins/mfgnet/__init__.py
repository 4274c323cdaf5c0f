"""MFG-Net (Xu et al., "Joint Multiple Fine-grained feature for Vehicle Re-Identification",
Array 2022) as a FastReID project: ``META_ARCHITECTURE: MFGNet`` + :func:`add_mfgnet_config`."""

from .. import data  # noqa: F401  (registers the plugins' datasets)
from ..method import Method
from ..patches import apply as _apply_patches
from ..engine import PluginTrainer
from .config import add_mfgnet_config, validate_mfgnet_config
from .meta_arch import MFGNet

__all__ = ["METHOD", "add_mfgnet_config", "validate_mfgnet_config", "MFGNet"]

#: the method's surface (:class:`fastreid_plugins.method.Method`)
METHOD = Method(name="MFG-Net", meta_arch="MFGNet", add_config=add_mfgnet_config,
                validate_config=validate_mfgnet_config, trainer=PluginTrainer,
                project="projects/MFGNet")

# FastReID's project idiom: importing the method package registers it (above) and patches
# FastReID as the method needs (every patch; idempotent, see fastreid_plugins.patches)
_apply_patches()
