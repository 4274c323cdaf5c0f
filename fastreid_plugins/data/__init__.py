"""Datasets and dataset input checks.

Importing this package registers :class:`~fastreid_plugins.data.vric.VRIC` and
:class:`~fastreid_plugins.data.veri_viewpoint.VeRiViewpoint` in FastReID's ``DATASET_REGISTRY``.
:mod:`~fastreid_plugins.data.validation` holds the input checks (clear errors for missing dataset
folders, unreadable images, image names that do not parse, malformed list files, empty splits,
batch settings an identity sampler cannot fill); :mod:`fastreid_plugins.patches.datasets` runs
them inside FastReID's dataset classes. :mod:`~fastreid_plugins.data.toy` generates a small
synthetic VeRi-776-layout dataset.
"""

from . import validation  # noqa: F401
from . import veri_viewpoint  # noqa: F401  (registers "VeRiViewpoint")
from .vric import VRIC  # noqa: F401  (registers "VRIC")
