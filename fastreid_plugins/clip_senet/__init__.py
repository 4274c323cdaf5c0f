"""CLIP-SENet (Lu et al., arXiv:2502.16815, 2025) as a FastReID project.

Importing this package registers the ``CLIPSENet`` meta-architecture and the ``VeRiViewpoint``
dataset. ``transformers`` is imported only when a SEM is built.
"""

from .. import data  # noqa: F401  (registers the plugins' datasets)
from ..patches import apply as _apply_patches
from .config import add_clip_senet_config, validate_clip_senet_config
from .meta_arch import CLIPSENet, build_cnn_backbone, build_sem
from .modules import AFEM, CameraViewEmbedding, FeatureFusion
from .tinyclip import (
                       TINYCLIP_VARIANTS,
                       SemanticExtractionModule,
                       SEMWeightsError,
                       load_sem_weights,
                       tinyclip_parameter_counts,
                       tinyclip_vision_config,
)
from .trainer import CLIPSENetTrainer

__all__ = ["add_config", "validate_config", "Trainer", "add_clip_senet_config",
           "validate_clip_senet_config", "CLIPSENet", "CLIPSENetTrainer", "AFEM", "FeatureFusion",
           "CameraViewEmbedding", "SemanticExtractionModule", "SEMWeightsError",
           "TINYCLIP_VARIANTS", "tinyclip_vision_config", "tinyclip_parameter_counts",
           "load_sem_weights", "build_cnn_backbone", "build_sem"]

#: what ``fastreid_plugins.method.METHODS["clip_senet"]`` resolves (its record is there)
add_config, validate_config = add_clip_senet_config, validate_clip_senet_config
Trainer = CLIPSENetTrainer

# FastReID's project idiom: importing the method package registers it (above) and patches
# FastReID as the method needs (every patch; idempotent, see fastreid_plugins.patches)
_apply_patches()
