"""Bad dataset input gets an error that names the file/layout (fastreid_plugins.data.validation).

Each patch is shown twice: the patched FastReID function gives a clear error, and the original
(kept in ``validation.ORIGINALS``) fails obscurely or silently on the same input.
"""

import os

import pytest
from PIL import Image

import fastreid_plugins
import fastreid.data.common as common
from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import Dataset
from fastreid.data.datasets.vehicleid import VehicleID
from fastreid.data.datasets.veri import VeRi
from fastreid_plugins.data import validation
from fastreid_plugins.data.validation import DatasetNotFoundError, ImageReadError

GOOD = ["0002_c002_00030600_0.jpg", "0002_c003_00030700_1.jpg", "0007_c004_00010000_0.jpg"]


def jpg(path, colour=(120, 40, 200), size=(32, 24)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", size, colour).save(path, quality=95)
    return path


def write_veri(root, train=GOOD, query=GOOD[:1], test=GOOD[1:]):
    for sub, names in (("image_train", train), ("image_query", query), ("image_test", test)):
        os.makedirs(os.path.join(root, "veri", sub), exist_ok=True)
        for n in names:
            jpg(os.path.join(root, "veri", sub, n))
    return os.path.join(root, "veri")


# ------------------------------------------------------------------ missing dataset folders
@pytest.mark.parametrize("name, expected", [
    ("VeRi", ["veri/", "image_train/", "image_query/", "image_test/", "0002_c002_00030600_0.jpg"]),
    ("VehicleID", ["vehicleid/", "image/<image id>.jpg", "train_list.txt", "test_list_13164.txt"]),
    ("SmallVehicleID", ["vehicleid/", "train_test_split/test_list_800.txt", "<image id> <vehicle id>"]),
    ("LargeVehicleID", ["test_list_2400.txt"]),
    ("VeRiWild", ["VERI-Wild/", "images/<vehicle id>/<image id>.jpg", "vehicle_info.txt"]),
    ("SmallVeRiWild", ["test_3000_query.txt"]),
    ("VRIC", ["VRIC/", "probe_images/", "vric_gallery.txt"]),
])
def test_missing_dataset_names_layout(tmp_path, name, expected):
    root = str(tmp_path / "datasets")
    with pytest.raises(DatasetNotFoundError) as e:
        DATASET_REGISTRY.get(name)(root=root)
    msg = str(e.value)
    assert f"Dataset {name}" in msg and repr(root) in msg and "FASTREID_DATASETS" in msg
    for part in expected:
        assert part in msg, part
    # still the type FastReID raised, so existing `except RuntimeError` keeps working
    assert isinstance(e.value, RuntimeError) and isinstance(e.value, FileNotFoundError)


def test_missing_dataset_without_patch_is_bare(tmp_path):
    """FastReID's own check names only the first missing path, and no layout."""
    ds = VeRi.__new__(VeRi)
    paths = [str(tmp_path / "veri"), str(tmp_path / "veri" / "image_query")]
    with pytest.raises(RuntimeError) as e:
        validation.ORIGINALS["check_before_run"](ds, paths)
    assert "image_query" not in str(e.value) and "layout" not in str(e.value)


def test_missing_subfolder_lists_only_what_is_missing(tmp_path):
    write_veri(str(tmp_path))
    os.rename(tmp_path / "veri" / "image_query", tmp_path / "veri" / "query")
    with pytest.raises(DatasetNotFoundError) as e:
        VeRi(root=str(tmp_path))
    msg = str(e.value)
    assert "1 required path(s) not found" in msg
    assert str(tmp_path / "veri" / "image_query") in msg


def test_unknown_dataset_lists_paths_without_layout(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        DATASET_REGISTRY.get("Market1501")(root=str(tmp_path))
    msg = str(e.value)
    assert "bounding_box_train" in msg and "FASTREID_DATASETS" in msg
    assert "expects this layout" not in msg


# ------------------------------------------------------------------ unreadable images
@pytest.fixture
def bad_images(tmp_path):
    good = jpg(str(tmp_path / "img" / "good.jpg"), size=(64, 64))
    trunc = str(tmp_path / "img" / "truncated.jpg")
    # a real JPEG with random content (so the payload is large), cut in half
    import numpy as np
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(trunc)
    data = open(trunc, "rb").read()
    with open(trunc, "wb") as f:
        f.write(data[: len(data) // 2])
    text = str(tmp_path / "img" / "not_an_image.jpg")
    with open(text, "w") as f:
        f.write("this is not a JPEG\n")
    return dict(good=good, truncated=trunc, text=text, missing=str(tmp_path / "img" / "gone.jpg"))


@pytest.mark.parametrize("kind, err", [("truncated", ImageReadError), ("text", ImageReadError),
                                       ("missing", FileNotFoundError)])
def test_unreadable_image_names_file(bad_images, kind, err):
    items = [(bad_images["good"], 1, 0), (bad_images[kind], 2, 0)]
    ds = CommDataset(items, transform=None, relabel=False)
    assert ds[0]["img_paths"] == bad_images["good"]
    with pytest.raises(err) as e:
        ds[1]
    assert repr(bad_images[kind]) in str(e.value)


def test_truncated_image_without_patch_names_no_file(bad_images):
    with pytest.raises(OSError) as e:
        validation.ORIGINALS["read_image"](bad_images["truncated"])
    assert "truncated.jpg" not in str(e.value)


# ------------------------------------------------------------------ VeRi image names
def test_veri_name_that_does_not_parse(tmp_path):
    write_veri(str(tmp_path), train=GOOD + ["car_0007.jpg"])
    with pytest.raises(ValueError) as e:
        VeRi(root=str(tmp_path))
    msg = str(e.value)
    assert str(tmp_path / "veri" / "image_train" / "car_0007.jpg") in msg
    assert "<vehicle id>_c<3-digit camera 001-020>_<frame>_<n>.jpg" in msg


def test_veri_name_without_patch_is_attribute_error(tmp_path):
    write_veri(str(tmp_path), train=GOOD + ["car_0007.jpg"])
    with pytest.raises(AttributeError):
        validation.ORIGINALS["VeRi.process_dir"](VeRi.__new__(VeRi),
                                                  str(tmp_path / "veri" / "image_train"))


@pytest.mark.parametrize("name", ["0800_c001_00000001_0.jpg", "0005_c021_00000001_0.jpg",
                                  "0005_c000_00000001_0.jpg"])
def test_veri_id_or_camera_out_of_range(tmp_path, name):
    write_veri(str(tmp_path), query=[name])
    with pytest.raises(ValueError) as e:
        VeRi(root=str(tmp_path))
    assert name in str(e.value) and "0 <= id <= 776" in str(e.value)
    with pytest.raises(AssertionError):  # FastReID: a bare assert
        validation.ORIGINALS["VeRi.process_dir"](VeRi.__new__(VeRi),
                                                  str(tmp_path / "veri" / "image_query"))


@pytest.mark.parametrize("odd", ["0002_c005_00000001_0.png", "0002_c005_00000001_0.JPG",
                                 "0002_c005_00000001_0.jpeg", "notes.txt"])
def test_veri_non_jpg_files_are_not_silently_dropped(tmp_path, odd):
    write_veri(str(tmp_path))
    path = tmp_path / "veri" / "image_test" / odd
    if odd.endswith(".txt"):
        path.write_text("camera notes\n")
    else:
        Image.new("RGB", (8, 8)).save(path, format="PNG" if odd.endswith(".png") else "JPEG")
    with pytest.raises(ValueError) as e:
        VeRi(root=str(tmp_path))
    assert odd in str(e.value) and "not '*.jpg' files" in str(e.value)
    # what FastReID does: silently skips the file (the split is smaller than the folder)
    items = validation.ORIGINALS["VeRi.process_dir"](VeRi.__new__(VeRi),
                                                      str(tmp_path / "veri" / "image_test"), False)
    assert len(items) == len(GOOD[1:])


def test_veri_subfolder_is_refused(tmp_path):
    write_veri(str(tmp_path))
    jpg(str(tmp_path / "veri" / "image_train" / "nested" / GOOD[0]))
    with pytest.raises(ValueError, match="nested"):
        VeRi(root=str(tmp_path))


def test_veri_os_metadata_files_are_ignored(tmp_path):
    write_veri(str(tmp_path))
    for n in (".DS_Store", "Thumbs.db"):
        open(tmp_path / "veri" / "image_train" / n, "w").close()
    ds = VeRi(root=str(tmp_path))
    assert len(ds.train) == 3 and len(ds.query) == 1 and len(ds.gallery) == 2


def test_veri_empty_folder(tmp_path):
    write_veri(str(tmp_path), query=[])
    with pytest.raises(ValueError, match="holds no '\\*.jpg' image"):
        VeRi(root=str(tmp_path))


def test_veri_folder_path_matching_the_pattern(tmp_path):
    """FastReID searches the full path: a parent folder like '12_c001' labels every image."""
    root = str(tmp_path / "run12_c001")
    write_veri(root)
    with pytest.raises(ValueError, match="itself matches"):
        VeRi(root=root)
    items = validation.ORIGINALS["VeRi.process_dir"](VeRi.__new__(VeRi),
                                                      os.path.join(root, "veri", "image_test"), False)
    assert {pid for _, pid, _ in items} == {12}  # both images mislabelled as vehicle 12


def test_real_sample_still_loads(veri_root):
    ds = VeRi(root=veri_root)
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (57, 30, 27)


# ------------------------------------------------------------------ VehicleID list files
def write_vehicleid_min(root, train_lines, images):
    d = os.path.join(root, "vehicleid")
    for i in images:
        jpg(os.path.join(d, "image", f"{i}.jpg"))
    os.makedirs(os.path.join(d, "train_test_split"), exist_ok=True)
    with open(os.path.join(d, "train_test_split", "train_list.txt"), "w") as f:
        f.write("\n".join(train_lines) + "\n")
    with open(os.path.join(d, "train_test_split", "test_list_800.txt"), "w") as f:
        f.write("0000100 0005\n0000101 0005\n")
    for i in ("0000100", "0000101"):
        jpg(os.path.join(d, "image", f"{i}.jpg"))
    return d


@pytest.mark.parametrize("bad, orig_error", [("0000003", IndexError), ("0000003 abc", ValueError),
                                             ("", IndexError), ("img3.jpg 0002", ValueError)])
def test_vehicleid_malformed_line(tmp_path, bad, orig_error):
    d = write_vehicleid_min(str(tmp_path), ["0000001 0001", "0000002 0001", bad],
                            ["0000001", "0000002", "0000003"])
    with pytest.raises(ValueError) as e:
        DATASET_REGISTRY.get("SmallVehicleID")(root=str(tmp_path))
    assert "train_list.txt:3" in str(e.value) and "<image id> <vehicle id>" in str(e.value)
    vid = VehicleID.__new__(VehicleID)
    vid.image_dir = os.path.join(d, "image")
    with pytest.raises(orig_error):  # FastReID: a bare error, no file or line
        validation.ORIGINALS["VehicleID.process_dir"](vid, os.path.join(d, "train_test_split",
                                                                        "train_list.txt"))


def test_vehicleid_listed_image_missing(tmp_path):
    d = write_vehicleid_min(str(tmp_path), ["0000001 0001", "0000002 0001", "0000009 0002"],
                            ["0000001", "0000002"])
    with pytest.raises(FileNotFoundError) as e:
        DATASET_REGISTRY.get("SmallVehicleID")(root=str(tmp_path))
    msg = str(e.value)
    assert "1 of 3" in msg and os.path.join(d, "image", "0000009.jpg") in msg
    assert "train_list.txt:3" in msg
    vid = VehicleID.__new__(VehicleID)
    vid.image_dir = os.path.join(d, "image")
    items = validation.ORIGINALS["VehicleID.process_dir"](
        vid, os.path.join(d, "train_test_split", "train_list.txt"))
    assert len(items) == 3  # FastReID: accepted; fails only when that batch is loaded


# ------------------------------------------------------------------ idempotence
def test_patches_are_idempotent():
    patched = [(Dataset, "check_before_run", "check_before_run"), (common, "read_image", "read_image"),
               (VeRi, "process_dir", "VeRi.process_dir"),
               (VehicleID, "process_dir", "VehicleID.process_dir")]
    before = [getattr(owner, name) for owner, name, _ in patched]
    applied = list(validation.APPLIED)
    validation.apply()
    validation.apply()
    assert [getattr(owner, name) for owner, name, _ in patched] == before
    assert validation.APPLIED == applied and len(set(applied)) == len(applied) == len(patched)
    # each wrapper wraps FastReID's original directly (never a wrapper of a wrapper)
    for owner, name, key in patched:
        assert getattr(owner, name).__wrapped__ is validation.ORIGINALS[key], key
    # one registry of originals for the compat layer and the data checks
    assert validation.ORIGINALS is fastreid_plugins.compat.ORIGINALS
    import fastreid.data.data_utils as du
    assert du.read_image is common.read_image
