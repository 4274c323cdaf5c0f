"""MBFN (Rong et al., "A vehicle re-identification framework based on the improved multi-branch
feature fusion network", Sci. Rep. 11, 20210, 2021) as a FastReID project:
``META_ARCHITECTURE: MBFN`` + :func:`add_mbfn_config`."""

from ..engine import PluginTrainer
from .config import add_mbfn_config, validate_mbfn_config
from .meta_arch import MBFN, mbfn_part_weights

__all__ = ["add_mbfn_config", "validate_mbfn_config", "MBFN", "mbfn_part_weights",
           "add_config", "validate_config", "Trainer"]

#: what ``fastreid_plugins.method.METHODS["mbfn"]`` resolves (its record is there)
add_config, validate_config, Trainer = add_mbfn_config, validate_mbfn_config, PluginTrainer
