"""Dataset validation: FastReID's dataset classes refuse bad input with an error naming it.

FastReID 1.4.0 skips or mislabels dataset entries silently and fails obscurely on missing folders
and unreadable images. These patches run the checks of :mod:`fastreid_plugins.data.validation`
first (policy "never silently train on part of a dataset"): targets
``fastreid.data.datasets.bases.Dataset.check_before_run``, ``fastreid.data.common.read_image``,
``VeRi.process_dir``, ``VehicleID.process_dir``, ``VeRiWild.process_vehicle`` / ``.process_dir``.
"""

from __future__ import annotations

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import functools
import inspect
import os

from ..data.validation import (
    check_vehicleid_list,
    check_veri_dir,
    check_veriwild_list,
    check_veriwild_vehicle_info,
    dataset_root,
    expected_layout,
    listing,
)
from ..errors import DatasetNotFoundError, ImageReadError
from .base import describe, patch_attr

__all__ = ["apply"]

describe("check_before_run.layout", concern="datasets", changes_models=False,
         why="A missing dataset folder ends in a bare RuntimeError naming one path: the error "
             "lists every missing path, the datasets root (FASTREID_DATASETS) and the layout "
             "the dataset expects.")
describe("read_image.names_file", concern="datasets", changes_models=False,
         why="An unreadable image ends in a PIL error without the file name: the error names "
             "the file (ImageReadError) or says it is listed but missing.")
describe("VeRi.process_dir.names", concern="datasets", changes_models=False,
         why="VeRi.process_dir skips or mislabels files whose names do not parse: they are an "
             "error listing them.")
describe("VehicleID.process_dir.lists", concern="datasets", changes_models=False,
         why="VehicleID.process_dir reads malformed list lines and missing images silently: an "
             "error naming file and line.")
describe("VeRiWild.process_vehicle.format", concern="datasets", changes_models=False,
         why="VeRiWild.process_vehicle misreads a malformed vehicle_info.txt: an error naming "
             "file and line.")
describe("VeRiWild.process_dir.lists", concern="datasets", changes_models=False,
         why="VeRiWild.process_dir reads malformed list lines and missing images silently: an "
             "error naming file and line.")


def _check_first(check):
    """A ``make_wrapper`` for :func:`~fastreid_plugins.patches.base.patch_attr`: the wrapped method
    ``method(self, arg, ...)`` runs ``check(self, arg)`` first, then FastReID's method."""
    def wrap(orig):
        first = list(inspect.signature(orig).parameters)[1]  # the parameter after ``self``

        @functools.wraps(orig)
        def method(self, *args, **kwargs):
            if args or first in kwargs:
                check(self, args[0] if args else kwargs[first])
            return orig(self, *args, **kwargs)
        return method
    return wrap


def _patch_check_before_run():
    from fastreid.data.datasets.bases import Dataset

    def wrap(orig):
        @functools.wraps(orig)
        def check_before_run(self, required_files):
            try:
                return orig(self, required_files)
            except RuntimeError as e:
                files = ([required_files] if isinstance(required_files, str)
                         else list(required_files))
                missing = [p for p in files if not os.path.exists(p)] or [str(e)]
                name = type(self).__name__
                msg = (f"Dataset {name}: {len(missing)} required path(s) not found:"
                       + listing(missing))
                if expected_layout(self) is None:
                    env = os.getenv("FASTREID_DATASETS")
                    msg += (f"\nFASTREID_DATASETS is {env!r}: it must be the folder that holds the "
                            "dataset folders." if env else "\nFASTREID_DATASETS is not set: "
                            "datasets are looked up under './datasets'.")
                else:
                    root = dataset_root(self)
                    msg += (f"\nDatasets are looked up under {root!r} (set FASTREID_DATASETS to "
                            "the folder that holds the dataset folders).\n"
                            f"{name} expects this layout:\n  "
                            + expected_layout(self, root).replace("\n", "\n  "))
                raise DatasetNotFoundError(msg) from None
        return check_before_run

    patch_attr(Dataset, "check_before_run", "check_before_run", wrap,
               tag="check_before_run.layout")


def _patch_read_image():
    import fastreid.data.common as common

    def wrap(orig):
        @functools.wraps(orig)
        def read_image(file_name, format=None):
            try:
                return orig(file_name, format)
            except FileNotFoundError:
                raise FileNotFoundError(f"Image file not found: {file_name!r} (listed by the "
                                        "dataset but missing on disk)") from None
            except (OSError, ValueError, SyntaxError) as e:
                raise ImageReadError(
                    f"Cannot read image {file_name!r}: {type(e).__name__}: {e}. The file is "
                    "corrupt, truncated or not an image; re-extract it from the dataset "
                    "archive.") from e
        return read_image

    patch_attr(common, "read_image", "read_image", wrap, modules=["fastreid.data.data_utils"],
               tag="read_image.names_file")


def _patch_veri_names():
    from fastreid.data.datasets.veri import VeRi

    patch_attr(VeRi, "process_dir", "VeRi.process_dir",
               _check_first(lambda self, dir_path: check_veri_dir(dir_path)),
               tag="VeRi.process_dir.names")


def _patch_vehicleid_lists():
    from fastreid.data.datasets.vehicleid import VehicleID

    patch_attr(VehicleID, "process_dir", "VehicleID.process_dir",
               _check_first(lambda self, list_file: check_vehicleid_list(list_file,
                                                                         self.image_dir)),
               tag="VehicleID.process_dir.lists")


def _patch_veriwild_lists():
    """``VeRiWild`` (and its Small/Medium/Large subclasses, which inherit both methods)."""
    from fastreid.data.datasets.veriwild import VeRiWild

    patch_attr(VeRiWild, "process_vehicle", "VeRiWild.process_vehicle",
               _check_first(lambda self, info: check_veriwild_vehicle_info(info)),
               tag="VeRiWild.process_vehicle.format")
    patch_attr(VeRiWild, "process_dir", "VeRiWild.process_dir",
               _check_first(lambda self, img_list: check_veriwild_list(
                   img_list, self.image_dir, self.imgid2vid, self.vehicle_info)),
               tag="VeRiWild.process_dir.lists")


def apply() -> None:
    """Apply this module's patches (idempotent)."""
    _patch_check_before_run()
    _patch_read_image()
    _patch_veri_names()
    _patch_vehicleid_lists()
    _patch_veriwild_lists()
