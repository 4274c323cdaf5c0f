"""MBFN (Rong et al., "A vehicle re-identification framework based on the improved multi-branch
feature fusion network", Sci. Rep. 11, 20210, 2021) as a FastReID project:
``META_ARCHITECTURE: MBFN`` + :func:`add_mbfn_config`."""

from .. import data  # noqa: F401  (registers the plugins' datasets)
from ..engine import PluginTrainer
from ..patches import apply as _apply_patches
from .config import add_mbfn_config, validate_mbfn_config
from .meta_arch import MBFN, mbfn_part_weights

__all__ = ["add_mbfn_config", "validate_mbfn_config", "MBFN", "mbfn_part_weights",
           "add_config", "validate_config", "Trainer"]

#: what ``fastreid_plugins.method.METHODS["mbfn"]`` resolves (its record is there)
add_config, validate_config, Trainer = add_mbfn_config, validate_mbfn_config, PluginTrainer

# FastReID's project idiom: importing the method package registers it (above) and patches
# FastReID as the method needs (every patch; idempotent, see fastreid_plugins.patches)
_apply_patches()
