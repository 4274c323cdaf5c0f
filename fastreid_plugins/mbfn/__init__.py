"""MBFN (Rong et al., "A vehicle re-identification framework based on the improved multi-branch
feature fusion network", Sci. Rep. 11, 20210, 2021) as a FastReID project:
``META_ARCHITECTURE: MBFN`` + :func:`add_mbfn_config`."""

from .. import data  # noqa: F401  (registers the plugins' datasets)
from ..method import Method
from ..patches import apply as _apply_patches
from ..engine import PluginTrainer
from .config import add_mbfn_config, validate_mbfn_config
from .meta_arch import MBFN, mbfn_part_weights

__all__ = ["METHOD", "add_mbfn_config", "validate_mbfn_config", "MBFN", "mbfn_part_weights"]

#: the method's surface (:class:`fastreid_plugins.method.Method`)
METHOD = Method(name="MBFN", meta_arch="MBFN", add_config=add_mbfn_config,
                validate_config=validate_mbfn_config, trainer=PluginTrainer,
                project="projects/MBFN")

# FastReID's project idiom: importing the method package registers it (above) and patches
# FastReID as the method needs (every patch; idempotent, see fastreid_plugins.patches)
_apply_patches()
