"""Datasets and dataset input checks.

Importing this package registers :class:`~fastreid_plugins.data.vric.VRIC` in FastReID's
``DATASET_REGISTRY`` and applies :mod:`~fastreid_plugins.data.validation` (clear errors for
missing dataset folders, unreadable images, image names that do not parse, malformed list files).
:mod:`~fastreid_plugins.data.toy` generates a small synthetic VeRi-776-layout dataset.
"""

from . import checks  # noqa: F401
from . import validation
from .vric import VRIC  # noqa: F401  (registers "VRIC")
from . import veri_viewpoint  # noqa: F401  (registers "VeRiViewpoint")

validation.apply()
