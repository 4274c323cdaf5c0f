"""VRIC loader (Kanaci et al., GCPR 2018) on a tiny layout written in the official format."""

import os

import pytest
from fastreid.data.datasets import DATASET_REGISTRY
from PIL import Image

import fastreid_plugins  # noqa: F401
from fastreid_plugins.data.validation import DatasetNotFoundError
from fastreid_plugins.data.vric import VRIC

# (image name, id, camera) in the official list-file format; names in UA-DETRAC style
TRAIN = [("MVI_20011_016_img00105.jpg", 15, 1), ("MVI_20011_016_img00110.jpg", 15, 1),
         ("MVI_40131_003_img00017.jpg", 15, 7), ("MVI_20032_101_img00420.jpg", 3, 2),
         ("MVI_39761_101_img00001.jpg", 3, 9), ("MVI_20051_007_img00044.jpg", 27, 2)]
PROBE = [("MVI_40701_001_img00002.jpg", 1, 4), ("MVI_40771_002_img00090.jpg", 2, 5)]
GALLERY = [("MVI_20062_001_img00150.jpg", 1, 11), ("MVI_63544_002_img00004.jpg", 2, 12)]


def write_vric(root, train=TRAIN, probe=PROBE, gallery=GALLERY, extra_lines=None):
    """Write ``root/VRIC`` in the official layout; ``extra_lines`` = {list name: [raw lines]}."""
    d = os.path.join(root, "VRIC")
    for sub, lst, rows in (("train_images", "vric_train.txt", train),
                           ("probe_images", "vric_probe.txt", probe),
                           ("gallery_images", "vric_gallery.txt", gallery)):
        os.makedirs(os.path.join(d, sub), exist_ok=True)
        lines = []
        for name, pid, cam in rows:
            Image.new("RGB", (24, 16), (10 * pid % 256, 40, 90)).save(os.path.join(d, sub, name))
            lines.append(f"{name} {pid} {cam}")
        lines += (extra_lines or {}).get(lst, [])
        with open(os.path.join(d, lst), "w") as f:
            f.write("\n".join(lines) + "\n")
    return d


def test_vric_registered():
    assert DATASET_REGISTRY.get("VRIC") is VRIC


def test_vric_items(tmp_path):
    d = write_vric(str(tmp_path))
    ds = VRIC(root=str(tmp_path))
    # counts
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (6, 2, 2)
    assert ds.get_num_pids(ds.train) == 3 and ds.get_num_cams(ds.train) == 4
    # train labels prefixed with the dataset name (as FastReID's VeRi), in list order
    assert ds.train[0] == (os.path.join(d, "train_images", "MVI_20011_016_img00105.jpg"),
                           "vric_15", "vric_1")
    assert [t[1] for t in ds.train] == [f"vric_{p}" for _, p, _ in TRAIN]
    assert [t[2] for t in ds.train] == [f"vric_{c}" for _, _, c in TRAIN]
    # probe = query, integer labels as published, paths in probe_images / gallery_images
    assert ds.query == [(os.path.join(d, "probe_images", n), p, c) for n, p, c in PROBE]
    assert ds.gallery == [(os.path.join(d, "gallery_images", n), p, c) for n, p, c in GALLERY]
    assert all(os.path.isfile(p) for p, _, _ in ds.train + ds.query + ds.gallery)


def test_vric_blank_lines_are_skipped(tmp_path):
    write_vric(str(tmp_path), extra_lines={"vric_probe.txt": ["", "   "]})
    assert len(VRIC(root=str(tmp_path)).query) == 2


@pytest.mark.parametrize("bad", ["MVI_1_img1.jpg 4", "MVI_1_img1.jpg four 4",
                                 "MVI_1_img1.jpg 4 4 extra"])
def test_vric_malformed_line_names_file_and_line(tmp_path, bad):
    write_vric(str(tmp_path), extra_lines={"vric_probe.txt": [bad]})
    with pytest.raises(ValueError) as e:
        VRIC(root=str(tmp_path))
    msg = str(e.value)
    assert "vric_probe.txt:3" in msg  # two good lines, then the bad one
    assert repr(bad) in msg and "<image name> <id> <camera>" in msg


def test_vric_listed_image_missing(tmp_path):
    d = write_vric(str(tmp_path))
    os.remove(os.path.join(d, "gallery_images", GALLERY[1][0]))
    with pytest.raises(FileNotFoundError) as e:
        VRIC(root=str(tmp_path))
    msg = str(e.value)
    assert GALLERY[1][0] in msg and "vric_gallery.txt:2" in msg and "1 of 2" in msg


def test_vric_missing_folder_shows_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        VRIC(root=str(tmp_path))
    msg = str(e.value)
    for part in ("VRIC", "train_images/", "probe_images/", "gallery_images/", "vric_train.txt",
                 "vric_probe.txt", "vric_gallery.txt", "<image name> <id> <camera>"):
        assert part in msg


def test_vric_through_fastreid_test_loader(tmp_path, datasets_root):
    """FastReID's own test-loader builder finds VRIC by name: probe first, then gallery."""
    from fastreid.data import build_reid_test_loader

    from tests.helpers import make_cfg

    write_vric(str(tmp_path))
    datasets_root(str(tmp_path))
    cfg = make_cfg("configs/demo/bagtricks_r18.yml",
                   ["DATASETS.TESTS", '("VRIC",)', "INPUT.SIZE_TEST", "[32,32]"])
    loader, num_query = build_reid_test_loader(cfg, dataset_name="VRIC")
    assert num_query == 2
    batch = next(iter(loader))
    assert batch["targets"].tolist() == [1, 2, 1, 2]
    assert batch["camids"].tolist() == [4, 5, 11, 12]
