"""SVRN: salience-navigated vehicle re-identification (Qian et al., IEEE T-ITS 2022).

Importing this package registers the ``SVRN`` meta-architecture in FastReID's
``META_ARCH_REGISTRY``; :func:`add_svrn_config` adds its keys under ``MODEL.SVRN``.
See ``projects/SVRN/README.md``.
"""

from .. import data  # noqa: F401  (registers the plugins' datasets)
from ..engine import PluginTrainer
from ..patches import apply as _apply_patches
from .config import add_svrn_config, num_suppressed, validate_svrn_config
from .critic import grid_critic, minmax_normalise
from .layers import ClassificationBlock, SalienceRanking, SpatialInformationMining, UnifiedLayer
from .losses import dcc_loss, icc_loss, reward_loss, vcc_loss
from .meta_arch import SVRN
from .suppression import random_suppression_mask, suppression_mask, upsample_mask

__all__ = ["SVRN", "add_config", "validate_config", "Trainer",
           "add_svrn_config", "validate_svrn_config", "num_suppressed", "grid_critic",
           "minmax_normalise", "ClassificationBlock", "SalienceRanking",
           "SpatialInformationMining", "UnifiedLayer", "reward_loss", "vcc_loss", "icc_loss",
           "dcc_loss", "suppression_mask", "random_suppression_mask", "upsample_mask"]

#: what ``fastreid_plugins.method.METHODS["svrn"]`` resolves (its record is there)
add_config, validate_config, Trainer = add_svrn_config, validate_svrn_config, PluginTrainer

# FastReID's project idiom: importing the method package registers it (above) and patches
# FastReID as the method needs (every patch; idempotent, see fastreid_plugins.patches)
_apply_patches()
