"""VeRi viewpoint loading (VeRiViewpoint) and the side-information dataset, on the real sample."""

import logging
import os

import pytest
import torch
from fastreid.data.build import fast_batch_collator
from fastreid.data.datasets import DATASET_REGISTRY

import fastreid_plugins  # noqa: F401
from fastreid_plugins.data.veri_viewpoint import (
    UNKNOWN_VIEWPOINT,
    SideInfoDataset,
    VeRiViewpoint,
    raw_camera_index,
    read_orientation_file,
)


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
        for img_path, _pid, _camid, view in items:
            assert view == txt[os.path.basename(img_path)]
    views = {it[3] for it in data.train}
    assert views <= set(range(8)) and len(views) > 1  # real labels, not a constant
    # identities / cameras are FastReID's VeRi ones
    assert all(isinstance(it[1], str) and it[1].startswith("veri_") for it in data.train)
    assert all(isinstance(it[2], int) for it in data.query)


def make_copy(tmp_path, veri_root, drop=(), write_test=True, write_train=True,
              names=("keypoint_orient_train.txt", "keypoint_orient_test.txt")):
    """A VeRi root in tmp_path: image folders symlinked, orientation files (optionally edited,
    written under ``names``: the train file's name, then the test file's)."""
    src = os.path.join(veri_root, "veri")
    dst = tmp_path / "veri"
    dst.mkdir()
    for d in ("image_train", "image_query", "image_test"):
        os.symlink(os.path.join(src, d), dst / d)
    for name, out in zip(("keypoint_orient_train.txt", "keypoint_orient_test.txt"), names):
        if (name.endswith("test.txt") and not write_test) or (
                name.endswith("train.txt") and not write_train):
            continue
        lines = open(os.path.join(src, name)).read().splitlines()
        lines = [ln for ln in lines if ln.split() and ln.split()[0] not in drop]
        (dst / out).write_text("\n".join(lines) + "\n")
    return str(tmp_path)


def test_keypoint_file_names_of_the_public_release(tmp_path, veri_root):
    """keypoint_{train,test}.txt (the annotation repository's / CLIP-ReID's names) are read."""
    ref = VeRiViewpoint(root=veri_root)
    root = make_copy(tmp_path, veri_root, names=("keypoint_train.txt", "keypoint_test.txt"))
    data = VeRiViewpoint(root=root)
    for a, b in ((ref.train, data.train), (ref.query, data.query), (ref.gallery, data.gallery)):
        assert [it[3] for it in a] == [it[3] for it in b]
        assert all(it[3] != UNKNOWN_VIEWPOINT for it in b)


def test_both_file_names_must_agree(tmp_path, veri_root):
    root = make_copy(tmp_path, veri_root)
    veri = os.path.join(root, "veri")
    lines = open(os.path.join(veri, "keypoint_orient_train.txt")).read().splitlines()
    first = lines[0].split()
    first[-1] = str((int(first[-1]) + 1) % 8)
    with open(os.path.join(veri, "keypoint_train.txt"), "w") as f:
        f.write(" ".join(first) + "\n")
    with pytest.raises(ValueError, match=rf"{first[0]} has orientation"):
        VeRiViewpoint(root=root)


def test_viewpoint_embedding_without_any_label_is_an_error(tmp_path, veri_root, datasets_root):
    from fastreid_plugins.clip_senet import CLIPSENetTrainer, add_clip_senet_config
    from tests.helpers import make_cfg

    datasets_root(make_copy(tmp_path, veri_root, write_train=False))
    cfg = make_cfg("configs/demo/clip_senet.yml", [], [add_clip_senet_config])
    with pytest.raises(ValueError, match=r"(?s)CV.VIEWPOINT is on but no train image.*"
                                         r"keypoint_train.txt.*keypoint_orient_train.txt"):
        CLIPSENetTrainer.build_train_loader(cfg)
    CLIPSENetTrainer.build_test_loader(cfg, "VeRiViewpoint")  # the test split has its labels
    off = make_cfg("configs/demo/clip_senet.yml", ["MODEL.CLIPSENET.CV.VIEWPOINT", False],
                   [add_clip_senet_config])
    CLIPSENetTrainer.build_train_loader(off)  # without the viewpoint embedding: fine


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
    assert "keypoint_orient_test.txt') in" in caplog.text and "every test image" in caplog.text


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
