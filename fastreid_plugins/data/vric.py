"""VRIC: Vehicle Re-Identification in Context, registered in FastReID's ``DATASET_REGISTRY``."""

import fastreid_plugins.patches.compat  # noqa: F401  (FastReID importable on torch 2)

import os.path as osp
from typing import Any, List, Optional, Tuple

from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import ImageDataset

from .root import datasets_root

__all__ = ["VRIC", "read_vric_list"]


def _strip_eol(line):
    return line.rstrip("\r\n")


def read_vric_list(list_file: str, image_dir: str) -> List[Tuple[str, int, int]]:
    """Parse one VRIC list file (``<image name> <id> <camera>`` per line).

    Args:
        list_file (str): ``vric_train.txt``, ``vric_probe.txt`` or ``vric_gallery.txt``.
        image_dir (str): the folder holding the listed images.

    Returns:
        list[tuple[str, int, int]]: ``(image path, pid, camid)`` in file order; blank lines are
        skipped.

    Raises:
        ValueError: a line does not have three whitespace-separated fields with integer id and
            camera (the message names ``file:line`` and the line), or the file lists no image.
        FileNotFoundError: listed images do not exist (all counted, the first 10 named): a split
            is never used partly.
    """
    items, missing = [], []
    with open(list_file) as f:
        for lineno, raw in enumerate(f, 1):
            parts = raw.split()
            if not parts:
                continue
            try:
                if len(parts) != 3:
                    raise ValueError
                name, pid, camid = parts[0], int(parts[1]), int(parts[2])
            except ValueError:
                raise ValueError(
                    f"{list_file}:{lineno}: expected '<image name> <id> <camera>' (e.g. "
                    f"'MVI_20011_016_img00105.jpg 15 1'), got {_strip_eol(raw)!r}") from None
            path = osp.join(image_dir, name)
            if not osp.isfile(path):
                missing.append(f"{path}  ({osp.basename(list_file)}:{lineno})")
            items.append((path, pid, camid))
    if not items:
        raise ValueError(f"The VRIC list file {list_file!r} lists no image.")
    if missing:
        more = f"\n  ... and {len(missing) - 10} more" if len(missing) > 10 else ""
        raise FileNotFoundError(
            f"{len(missing)} of {len(items)} images listed in {list_file!r} do not exist in "
            f"{image_dir!r} (a split is never used partly; re-extract VRIC.zip):\n  "
            + "\n  ".join(missing[:10]) + more)
    return items


@DATASET_REGISTRY.register()
class VRIC(ImageDataset):
    """VRIC (Vehicle Re-Identification in Context).

    Vehicle crops from the UA-DETRAC benchmark with realistic changes of resolution, motion blur,
    illumination, occlusion and viewpoint. Train and test identities are disjoint; every test
    identity has exactly one probe (query) and one gallery image, from different cameras.

    Reference:
        Kanaci, Zhu and Gong. Vehicle Re-Identification in Context. GCPR 2018.

    URL: `<https://qmul-vric.github.io/>`_

    Layout (the contents of the official ``VRIC.zip``) under ``<root>/VRIC/``::

        train_images/    probe_images/    gallery_images/
        vric_train.txt   vric_probe.txt   vric_gallery.txt   (lines '<image name> <id> <camera>')

    Probe = query. Identities and cameras are read from the list files (the image names carry
    neither). As in FastReID's ``VeRi``, train pids and camids are prefixed with the dataset name
    (``"vric_<id>"``); query/gallery labels stay integers. Camera labels are used as published
    (no re-basing; only equality matters for the same-camera junk rule, which removes nothing in
    the official split).

    Dataset statistics:
        - train: 2,811 identities, 54,808 images.
        - test: 2,811 identities, 2,811 probe (query) + 2,811 gallery images.

    Args:
        root (str): the datasets root holding ``VRIC/`` (default:
            :func:`~fastreid_plugins.data.root.datasets_root`, i.e. ``$FASTREID_DATASETS``).

    Raises:
        DatasetNotFoundError: a folder or list file is missing (the message shows the layout).
        ValueError: a malformed list line (names file and line).
        FileNotFoundError: a listed image does not exist.
    """
    dataset_dir = "VRIC"
    dataset_name = "vric"

    def __init__(self, root: Optional[str] = None, **kwargs: Any) -> None:
        root = datasets_root() if root is None else root
        self.dataset_dir = osp.join(root, self.dataset_dir)
        self.train_dir = osp.join(self.dataset_dir, "train_images")
        self.query_dir = osp.join(self.dataset_dir, "probe_images")
        self.gallery_dir = osp.join(self.dataset_dir, "gallery_images")
        self.train_list = osp.join(self.dataset_dir, "vric_train.txt")
        self.query_list = osp.join(self.dataset_dir, "vric_probe.txt")
        self.gallery_list = osp.join(self.dataset_dir, "vric_gallery.txt")

        self.check_before_run([self.dataset_dir, self.train_dir, self.query_dir, self.gallery_dir,
                               self.train_list, self.query_list, self.gallery_list])

        train = [(p, f"{self.dataset_name}_{pid}", f"{self.dataset_name}_{cam}")
                 for p, pid, cam in read_vric_list(self.train_list, self.train_dir)]
        query = read_vric_list(self.query_list, self.query_dir)
        gallery = read_vric_list(self.gallery_list, self.gallery_dir)
        super().__init__(train, query, gallery, **kwargs)
