"""MFG-Net (Xu et al., "Joint Multiple Fine-grained feature for Vehicle Re-Identification",
Array 2022) as a FastReID project: ``META_ARCHITECTURE: MFGNet`` + :func:`add_mfgnet_config`."""

from .config import add_mfgnet_config, validate_mfgnet_config
from .meta_arch import MFGNet

__all__ = ["add_mfgnet_config", "validate_mfgnet_config", "MFGNet"]
