"""VeRi-776 with viewpoint (orientation) labels, and a dataset putting side information in batches.

* :class:`VeRiViewpoint` (registered in FastReID's ``DATASET_REGISTRY`` as ``"VeRiViewpoint"``):
  FastReID's :class:`~fastreid.data.datasets.veri.VeRi` whose items carry a fourth field, the
  viewpoint index read from the public annotation files of Wang et al. (ICCV 2017; last column =
  orientation 0-7) under either name in use: ``keypoint_{train,test}.txt`` (the annotation
  repository's and CLIP-ReID's) or ``keypoint_orient_{train,test}.txt``. An image without a label
  (or a split without a file) gets :data:`UNKNOWN_VIEWPOINT`.
* :class:`SideInfoDataset`: FastReID's :class:`~fastreid.data.common.CommDataset` that also returns
  ``"viewids"`` (the item's viewpoint, :data:`UNKNOWN_VIEWPOINT` when it has none) and
  ``"sie_camids"`` (the dataset's raw camera index, identical in training and test). FastReID's
  ``CommDataset`` returns only ``images/targets/camids/img_paths`` and relabels training cameras in
  *string* order (``"veri_10" < "veri_2"``), so its training ``camids`` do not index the same
  camera as the test ``camids``; camera embeddings (SIE) need the raw index instead.

``fast_batch_collator`` (FastReID's) stacks the two extra int keys like ``camids``.
"""

from __future__ import annotations

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.veri import VeRi

from .root import datasets_root

if TYPE_CHECKING:
    import numpy as np

__all__ = ["VeRiViewpoint", "SideInfoDataset", "read_orientation_file", "raw_camera_index",
           "orientation_files", "NUM_VERI_VIEWPOINTS", "UNKNOWN_VIEWPOINT", "UNKNOWN_CAMERA"]

logger = logging.getLogger(__name__)

#: VeRi-776 orientation classes (Wang et al., ICCV 2017): labels 0-7.
NUM_VERI_VIEWPOINTS = 8
#: Viewpoint index of an image without a label. Models map it to their own "unknown" embedding.
UNKNOWN_VIEWPOINT = -1
#: Camera index when the camera is not known (e.g. a bare image tensor at inference).
UNKNOWN_CAMERA = -1

#: Accepted names of the orientation files per split, in lookup order.
ORIENT_FILES = {
    "train": ("keypoint_train.txt", "keypoint_orient_train.txt"),
    "test": ("keypoint_test.txt", "keypoint_orient_test.txt"),
}


def orientation_files(split: str) -> Tuple[str, ...]:
    """The accepted file names of a split's orientation labels ("train" or "test")."""
    return ORIENT_FILES[split]


def read_orientation_file(path: str, num_viewpoints: int = NUM_VERI_VIEWPOINTS) -> Dict[str, int]:
    """Read a VeRi ``keypoint_orient_*.txt`` file into ``{image file name: orientation}``.

    Each line is ``<image name or path> <40 keypoint coordinates> <orientation>``; only the first
    field (reduced to its base name) and the last one are used.

    Reference:
        Wang et al., "Orientation Invariant Feature Embedding and Spatial Temporal Regularization
        for Vehicle Re-identification", ICCV 2017 (VeRi-776 keypoint / orientation annotations).

    Args:
        path (str): the annotation file.
        num_viewpoints (int): labels must lie in ``[0, num_viewpoints)``.

    Returns:
        dict[str, int]: orientation label per image file name.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: a line has fewer than two fields, a non-integer or out-of-range last field, or
            an image listed twice with different labels (the message names file and line).
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"VeRi orientation file not found: {path!r}")
    labels = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            where = f"{path}:{lineno}"
            if len(fields) < 2:
                raise ValueError(f"{where}: expected '<image> ... <orientation>', "
                                 f"got {line.strip()!r}")
            try:
                view = int(fields[-1])
            except ValueError:
                raise ValueError(f"{where}: the last field (orientation) must be an integer, "
                                 f"got {fields[-1]!r}") from None
            if not 0 <= view < num_viewpoints:
                raise ValueError(f"{where}: orientation {view} is outside [0, {num_viewpoints})")
            name = os.path.basename(fields[0])
            if labels.get(name, view) != view:
                raise ValueError(f"{where}: {name} is listed again with orientation {view} "
                                 f"(first: {labels[name]})")
            labels[name] = view
    return labels


def raw_camera_index(camid: Union[int, str, np.integer]) -> int:
    """The dataset's integer camera index of a FastReID item.

    FastReID datasets store test cameras as ints and training cameras as ``"<dataset>_<int>"``
    strings; both map to the same int.

    Raises:
        ValueError: ``camid`` is neither an int nor a string ending in ``_<int>``.
    """
    if isinstance(camid, bool):
        raise ValueError(f"camera id must be an int or '<dataset>_<int>', got {camid!r}")
    if isinstance(camid, int):
        return camid
    if isinstance(camid, str):
        try:
            return int(camid.rsplit("_", 1)[-1])
        except ValueError:
            pass
    try:
        import numpy as np
        if isinstance(camid, np.integer):
            return int(camid)
    except ImportError:  # pragma: no cover
        pass
    raise ValueError(f"camera id must be an int or '<dataset>_<int>', got {camid!r}")


@DATASET_REGISTRY.register()
class VeRiViewpoint(VeRi):
    """VeRi-776 whose items are ``(img_path, pid, camid, viewpoint)``.

    The viewpoint is the orientation label (0-7) of ``keypoint_train.txt`` (or
    ``keypoint_orient_train.txt``) for ``image_train`` and of ``keypoint_test.txt`` (or
    ``keypoint_orient_test.txt``) for ``image_query`` / ``image_test`` (query images are test
    images), looked up by file name. When both names of a split exist both are read, and an image
    they label differently is an error. Images without a label, and every image of a split with
    no file, get :data:`UNKNOWN_VIEWPOINT` (a warning says how many); a model that uses
    viewpoints refuses a split without any label (``CLIPSENetTrainer``).
    Identities and cameras are FastReID's ``VeRi`` ones (``dataset_name`` stays ``"veri"``).

    Reference:
        - Liu et al., "A Deep Learning-Based Approach to Progressive Vehicle Re-identification for
          Urban Surveillance", ECCV 2016 (VeRi-776).
        - Wang et al., ICCV 2017 (orientation labels).

    Args:
        root (str): directory holding ``veri/`` (default:
            :func:`~fastreid_plugins.data.root.datasets_root`, i.e. ``$FASTREID_DATASETS``).

    Raises:
        RuntimeError: FastReID's check that the ``veri`` folders exist.
        ValueError: a malformed orientation file (see :func:`read_orientation_file`), or two
            files of a split that label an image differently.
    """

    dataset_name = "veri"
    num_viewpoints = NUM_VERI_VIEWPOINTS

    def __init__(self, root: Optional[str] = None, **kwargs: Any) -> None:
        root = datasets_root() if root is None else root
        dataset_dir = os.path.join(root, "veri")
        self.viewpoint_labels = {split: self._labels(dataset_dir, split) for split in ORIENT_FILES}
        super().__init__(root=root, **kwargs)

    @staticmethod
    def _labels(dataset_dir, split):
        paths = [os.path.join(dataset_dir, n) for n in ORIENT_FILES[split]]
        found = [p for p in paths if os.path.isfile(p)]
        if not found:
            logger.warning(f"None of {ORIENT_FILES[split]} in {dataset_dir}: every {split} image "
                           f"gets the unknown viewpoint index ({UNKNOWN_VIEWPOINT}).")
            return None
        labels = {}
        for path in found:
            for name, view in read_orientation_file(path).items():
                if labels.get(name, view) != view:
                    raise ValueError(f"{name} has orientation {labels[name]} in {found[0]} but "
                                     f"{view} in {path}")
                labels[name] = view
        logger.info(f"VeRi viewpoints ({split}): {len(labels)} labels from {found}")
        return labels

    def process_dir(self, dir_path: str,
                    is_train: bool = True
                    ) -> List[Tuple[str, Union[int, str], Union[int, str], int]]:
        items = super().process_dir(dir_path, is_train=is_train)
        labels = self.viewpoint_labels["train" if is_train else "test"]
        out, unknown = [], 0
        for img_path, pid, camid in sorted(items):
            view = UNKNOWN_VIEWPOINT if labels is None else labels.get(os.path.basename(img_path),
                                                                         UNKNOWN_VIEWPOINT)
            unknown += view == UNKNOWN_VIEWPOINT
            out.append((img_path, pid, camid, view))
        if unknown and labels is not None:
            logger.warning(f"{unknown} of {len(out)} images in {dir_path} have no orientation "
                           f"label: viewpoint index {UNKNOWN_VIEWPOINT} (unknown).")
        return out

    def combine_all(self) -> None:
        """FastReID's ``combine_all`` (train + query + gallery as training data) for 4-tuples."""
        combined = list(self.train)
        for img_path, pid, camid, view in self.query + self.gallery:
            if pid in self._junk_pids:
                continue
            combined.append((img_path, f"{self.dataset_name}_test_{pid}",
                             f"{self.dataset_name}_test_{camid}", view))
        self._train = combined


class SideInfoDataset(CommDataset):
    """FastReID's ``CommDataset`` plus the side information SIE needs, as two more batch keys.

    Each sample also holds

    * ``"viewids"`` (int): the item's fourth field when it has one (e.g. :class:`VeRiViewpoint`),
      else :data:`UNKNOWN_VIEWPOINT`;
    * ``"sie_camids"`` (int): :func:`raw_camera_index` of the item's camera, the same number for a
      camera in training (where ``camids`` is relabelled) and in test.

    Args:
        img_items (list[tuple]): ``(img_path, pid, camid[, viewpoint])`` items.
        transform (callable): image transform.
        relabel (bool): FastReID's pid/camid relabelling (True for training).

    Raises:
        ValueError: an item's camera id cannot be read as an integer index.
    """

    def __init__(self, img_items: Sequence[tuple], transform: Optional[Callable[[Any], Any]] = None,
                 relabel: bool = True) -> None:
        super().__init__(img_items, transform, relabel)
        self.sie_camids = [raw_camera_index(it[2]) for it in img_items]
        self.viewids = [int(it[3]) if len(it) > 3 else UNKNOWN_VIEWPOINT for it in img_items]

    def __getitem__(self, index: int) -> Dict[str, Any]:
        sample = super().__getitem__(index)
        sample["viewids"] = self.viewids[index]
        sample["sie_camids"] = self.sie_camids[index]
        return sample
