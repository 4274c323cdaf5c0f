"""VeRi viewpoint loading (VeRiViewpoint) and the side-information dataset, on the real sample."""

import logging
import os

import pytest
import torch

import fastreid_plugins  # noqa: F401
from fastreid.data.build import fast_batch_collator
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid_plugins.data.veri_viewpoint import (UNKNOWN_VIEWPOINT, SideInfoDataset, VeRiViewpoint,
                                                  raw_camera_index, read_orientation_file)


def last_column(path):
    """{file name: int(last field)} straight from the txt file."""
    out = {}
    with open(path) as f:
        for line in f:
            if line.strip():
                fields = line.split()
                out[os.path.basename(fields[0])] = int(fields[-1])
    return out


def test_registered():
    assert DATASET_REGISTRY.get("VeRiViewpoint") is VeRiViewpoint


def test_labels_equal_txt_last_column(veri_root):
    data = VeRiViewpoint(root=veri_root)
    veri = os.path.join(veri_root, "veri")
    train_txt = last_column(os.path.join(veri, "keypoint_orient_train.txt"))
    test_txt = last_column(os.path.join(veri, "keypoint_orient_test.txt"))
    assert len(data.train) == 57 and len(data.query) == 30 and len(data.gallery) == 27
    for items, txt in ((data.train, train_txt), (data.query, test_txt), (data.gallery, test_txt)):
        for img_path, pid, camid, view in items:
            assert view == txt[os.path.basename(img_path)]
    views = {it[3] for it in data.train}
    assert views <= set(range(8)) and len(views) > 1  # real labels, not a constant
    # identities / cameras are FastReID's VeRi ones
    assert all(isinstance(it[1], str) and it[1].startswith("veri_") for it in data.train)
    assert all(isinstance(it[2], int) for it in data.query)


def make_copy(tmp_path, veri_root, drop=(), write_test=True):
    """A VeRi root in tmp_path: image folders symlinked, orientation files (optionally edited)."""
    src = os.path.join(veri_root, "veri")
    dst = tmp_path / "veri"
    dst.mkdir()
    for d in ("image_train", "image_query", "image_test"):
        os.symlink(os.path.join(src, d), dst / d)
    for name in ("keypoint_orient_train.txt", "keypoint_orient_test.txt"):
        if name.endswith("test.txt") and not write_test:
            continue
        lines = open(os.path.join(src, name)).read().splitlines()
        lines = [ln for ln in lines if ln.split() and ln.split()[0] not in drop]
        (dst / name).write_text("\n".join(lines) + "\n")
    return str(tmp_path)


def test_missing_label_gets_unknown_index(tmp_path, veri_root, caplog):
    names = sorted(os.listdir(os.path.join(veri_root, "veri", "image_train")))
    dropped = names[0]
    root = make_copy(tmp_path, veri_root, drop={dropped})
    with caplog.at_level(logging.WARNING):
        data = VeRiViewpoint(root=root)
    views = {os.path.basename(p): v for p, _, _, v in data.train}
    assert views[dropped] == UNKNOWN_VIEWPOINT
    assert sum(v == UNKNOWN_VIEWPOINT for v in views.values()) == 1
    assert "no orientation label" in caplog.text


def test_missing_file_gives_all_unknown(tmp_path, veri_root, caplog):
    root = make_copy(tmp_path, veri_root, write_test=False)
    with caplog.at_level(logging.WARNING):
        data = VeRiViewpoint(root=root)
    assert all(it[3] == UNKNOWN_VIEWPOINT for it in data.query + data.gallery)
    assert all(it[3] != UNKNOWN_VIEWPOINT for it in data.train)
    assert "keypoint_orient_test.txt not found" in caplog.text


def test_malformed_orientation_file(tmp_path):
    bad = tmp_path / "keypoint_orient_train.txt"
    bad.write_text("0001_c001_00016450_0.jpg 1 2 3 9\n")
    with pytest.raises(ValueError, match=r"keypoint_orient_train.txt:1: orientation 9"):
        read_orientation_file(str(bad))
    bad.write_text("0001_c001_00016450_0.jpg 1 2 x\n")
    with pytest.raises(ValueError, match="must be an integer"):
        read_orientation_file(str(bad))
    bad.write_text("0001_c001_00016450_0.jpg\n")
    with pytest.raises(ValueError, match="expected"):
        read_orientation_file(str(bad))
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        read_orientation_file(str(tmp_path / "nope.txt"))


def test_combine_all_keeps_viewpoints(veri_root):
    data = VeRiViewpoint(root=veri_root, combineall=True)
    assert len(data.train) == 57 + 30 + 27
    assert all(len(it) == 4 for it in data.train)


def test_raw_camera_index():
    assert raw_camera_index(4) == 4
    assert raw_camera_index("veri_12") == 12
    assert raw_camera_index("smallveriwild_0") == 0
    with pytest.raises(ValueError, match="camera id"):
        raw_camera_index("cam")


def test_side_info_dataset_batches(veri_root):
    """viewids and sie_camids reach the batch; sie_camids agree between train and test."""
    data = VeRiViewpoint(root=veri_root)
    to_tensor = lambda img: torch.zeros(3, 4, 4)  # noqa: E731  (images are not under test here)
    train = SideInfoDataset(data.train, to_tensor, relabel=True)
    test = SideInfoDataset(data.query + data.gallery, to_tensor, relabel=False)
    batch = fast_batch_collator([train[i] for i in range(8)])
    assert set(batch) >= {"images", "targets", "camids", "img_paths", "viewids", "sie_camids"}
    assert batch["viewids"].dtype == torch.int64 and batch["viewids"].shape == (8,)
    cam_of = {}
    for ds in (train, test):
        for i in range(len(ds)):
            s = ds[i]
            # VeRi file names carry the camera: 0002_c002_... -> index 1 (FastReID's camid - 1)
            expect = int(os.path.basename(s["img_paths"]).split("_")[1][1:]) - 1
            assert s["sie_camids"] == expect
            cam_of.setdefault(expect, set()).add(ds is train)
    # the same physical camera has the same index in both splits (unlike relabelled camids)
    assert any(len(v) == 2 for v in cam_of.values())
    test_batch = fast_batch_collator([test[i] for i in range(4)])
    assert torch.equal(test_batch["sie_camids"], test_batch["camids"])
