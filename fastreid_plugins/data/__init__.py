"""Datasets, the datasets root, the training data path and dataset input checks.

Importing this package registers :class:`~fastreid_plugins.data.vric.VRIC` and
:class:`~fastreid_plugins.data.veri_viewpoint.VeRiViewpoint` in FastReID's ``DATASET_REGISTRY``.

* :func:`datasets_root` / :func:`set_datasets_root` (:mod:`~fastreid_plugins.data.root`): the one
  accessor and the one setter of the datasets root (``$FASTREID_DATASETS``).
* :mod:`~fastreid_plugins.data.train_loader`: the one training data path (dataset -> identity
  sampler -> seeded sampler -> loader, checked once), used by every trainer of the package.
* :mod:`~fastreid_plugins.data.validation`: the input checks (clear errors for missing dataset
  folders, unreadable images, image names that do not parse, malformed list files, empty splits,
  batch settings an identity sampler cannot fill); :mod:`fastreid_plugins.patches.datasets` runs
  them inside FastReID's dataset classes.
* :mod:`~fastreid_plugins.data.toy`: a small synthetic VeRi-776-layout dataset.
"""

from . import (
    validation,  # noqa: F401
    veri_viewpoint,  # noqa: F401  (registers "VeRiViewpoint")
)
from .root import datasets_root, set_datasets_root
from .vric import VRIC  # noqa: F401  (registers "VRIC")

__all__ = ["datasets_root", "set_datasets_root", "VRIC"]
