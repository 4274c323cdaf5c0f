"""Bad dataset input gets an error that names the file/layout (fastreid_plugins.data.validation).

Each patch is shown twice: the patched FastReID function gives a clear error, and the original
(kept in ``fastreid_plugins.patches.ORIGINALS``) fails obscurely or silently on the same input.
"""

import os

import fastreid.data.common as common
import pytest
from fastreid.data.common import CommDataset
from fastreid.data.datasets import DATASET_REGISTRY
from fastreid.data.datasets.bases import Dataset
from fastreid.data.datasets.vehicleid import VehicleID
from fastreid.data.datasets.veri import VeRi
from PIL import Image

import fastreid_plugins  # noqa: F401  (applies the patches, registers the datasets)
from fastreid_plugins.data.validation import DatasetNotFoundError, ImageReadError
from fastreid_plugins.patches import APPLIED, ORIGINALS, PATCHES
from fastreid_plugins.patches import datasets as patches_datasets

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
    ("SmallVehicleID",
     ["vehicleid/", "train_test_split/test_list_800.txt", "<image id> <vehicle id>"]),
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
        ORIGINALS["check_before_run"](ds, paths)
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
    Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(trunc)
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
        ORIGINALS["read_image"](bad_images["truncated"])
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
        ORIGINALS["VeRi.process_dir"](VeRi.__new__(VeRi),
                                                  str(tmp_path / "veri" / "image_train"))


@pytest.mark.parametrize("name", ["0800_c001_00000001_0.jpg", "0005_c021_00000001_0.jpg",
                                  "0005_c000_00000001_0.jpg"])
def test_veri_id_or_camera_out_of_range(tmp_path, name):
    write_veri(str(tmp_path), query=[name])
    with pytest.raises(ValueError) as e:
        VeRi(root=str(tmp_path))
    assert name in str(e.value) and "0 <= id <= 776" in str(e.value)
    with pytest.raises(AssertionError):  # FastReID: a bare assert
        ORIGINALS["VeRi.process_dir"](VeRi.__new__(VeRi),
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
    items = ORIGINALS["VeRi.process_dir"](VeRi.__new__(VeRi),
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
    items = ORIGINALS["VeRi.process_dir"](VeRi.__new__(VeRi),
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
        ORIGINALS["VehicleID.process_dir"](vid, os.path.join(d, "train_test_split",
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
    items = ORIGINALS["VehicleID.process_dir"](
        vid, os.path.join(d, "train_test_split", "train_list.txt"))
    assert len(items) == 3  # FastReID: accepted; fails only when that batch is loaded


# ------------------------------------------------------------------ VERI-Wild list files
# vehicle id -> [(image id, camera id)]; vehicles 1-2 train, 3-4 test (query: first image of each)
VW_IMAGES = {"00001": [("000001", 1), ("000002", 2)], "00002": [("000003", 3), ("000004", 4)],
             "00003": [("000005", 1), ("000006", 5)], "00004": [("000007", 2), ("000008", 6)]}
VW_TRAIN = ["00001/000001", "00001/000002", "00002/000003", "00002/000004"]
VW_QUERY = ["00003/000005", "00004/000007"]
VW_GALLERY = ["00003/000006", "00004/000008", "00003/000005"]
VW_HEADER = "id/image;Camera ID;Time;Model;Type;Color"


def vw_info_lines():
    return [f"{vid}/{img};{cam:03d};2018-03-14 10:53:35;Audi-A4L;sedan;white"
            for vid, imgs in VW_IMAGES.items() for img, cam in imgs]


def write_veriwild(root, train=None, query=None, gallery=None, info=None, header=True,
                   skip_images=()):
    """A tiny VERI-Wild folder; returns its ``train_test_split`` folder."""
    d = os.path.join(root, "VERI-Wild")
    for vid, imgs in VW_IMAGES.items():
        for img, _ in imgs:
            if img not in skip_images:
                jpg(os.path.join(d, "images", vid, f"{img}.jpg"), size=(8, 8))
    split = os.path.join(d, "train_test_split")
    os.makedirs(split, exist_ok=True)

    def write(name, lines):
        with open(os.path.join(split, name), "w") as f:
            f.write("".join(line + "\n" for line in lines))

    info = vw_info_lines() if info is None else info
    write("vehicle_info.txt", ([VW_HEADER] if header else []) + info)
    write("train_list.txt", VW_TRAIN if train is None else train)
    for size in (3000, 5000, 10000):
        write(f"test_{size}_query.txt", VW_QUERY if query is None else query)
        write(f"test_{size}.txt", VW_GALLERY if gallery is None else gallery)
    return split


@pytest.mark.parametrize("name", ["VeRiWild", "SmallVeRiWild", "MediumVeRiWild", "LargeVeRiWild"])
def test_veriwild_good_folder_loads(tmp_path, name):
    write_veriwild(str(tmp_path))
    ds = DATASET_REGISTRY.get(name)(root=str(tmp_path))
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (4, 2, 3)
    img = os.path.join(str(tmp_path), "VERI-Wild", "images", "00003", "000005.jpg")
    assert (img, 3, 1) in ds.query and (img, 3, 1) in ds.gallery
    assert {pid for _, pid, _ in ds.train} == {"veriwild_1", "veriwild_2"}
    assert all(os.path.isfile(p) for p, _, _ in ds.train + ds.query + ds.gallery)


def test_veriwild_unlisted_record_need_not_exist(tmp_path):
    """vehicle_info.txt covers every split size: only the images the lists name must exist."""
    info = vw_info_lines() + ["00009/000099;007;2018-03-14 10:53:35;Audi-A4L;sedan;white"]
    write_veriwild(str(tmp_path), info=info)
    ds = DATASET_REGISTRY.get("SmallVeRiWild")(root=str(tmp_path))
    assert (len(ds.train), len(ds.query), len(ds.gallery)) == (4, 2, 3)


def vw_unpatched(root, split):
    """A VeRiWild instance whose vehicle info was read by FastReID's own (unpatched) parser."""
    from fastreid.data.datasets.veriwild import VeRiWild
    ds = VeRiWild.__new__(VeRiWild)
    ds.image_dir = os.path.join(root, "VERI-Wild", "images")
    ds.dataset_name = "veriwild"
    ds.imgid2vid, ds.imgid2camid, ds.imgid2imgpath = ORIGINALS[
        "VeRiWild.process_vehicle"](ds, os.path.join(split, "vehicle_info.txt"))
    return ds


def _replace(lines, index, text):
    lines = list(lines)
    lines[index] = text
    return lines


@pytest.mark.parametrize("where, index, bad, expected", [
    ("train", 2, "00002-000003", "'<vehicle id>/<image id>'"),
    ("train", 2, "veh2/000003", "'<vehicle id>/<image id>'"),
    ("train", 2, "", "'<vehicle id>/<image id>'"),
    ("train", 2, "00002/000003/x", "'<vehicle id>/<image id>'"),
    ("query", 1, "00004/000999", "has no record in"),
    ("gallery", 0, "00004/000006", "gives vehicle 00004 but"),
])
def test_veriwild_bad_list_line(tmp_path, where, index, bad, expected):
    lists = {"train": VW_TRAIN, "query": VW_QUERY, "gallery": VW_GALLERY}
    lists[where] = _replace(lists[where], index, bad)
    write_veriwild(str(tmp_path), **lists)
    with pytest.raises(ValueError) as e:
        DATASET_REGISTRY.get("SmallVeRiWild")(root=str(tmp_path))
    msg = str(e.value)
    fname = {"train": "train_list.txt", "query": "test_3000_query.txt",
             "gallery": "test_3000.txt"}[where]
    assert f"{fname}:{index + 1}:" in msg and repr(bad) in msg and expected in msg, msg


def test_veriwild_bad_list_line_without_patch(tmp_path):
    """FastReID: a bare KeyError / ValueError naming neither file nor line."""
    split = write_veriwild(str(tmp_path), query=_replace(VW_QUERY, 1, "00004/000999"))
    ds = vw_unpatched(str(tmp_path), split)
    with pytest.raises(KeyError) as e:
        ORIGINALS["VeRiWild.process_dir"](ds, os.path.join(split, "test_3000_query.txt"))
    assert "test_3000_query.txt" not in str(e.value)


@pytest.mark.parametrize("index, bad, orig_error", [
    (0, "00001/000001", IndexError),                               # no ';' fields
    (1, "00001/000002;cam2;2018-03-14 10:53:35", None),            # camera id not an integer
    (2, "00002;000003;003", IndexError),                           # no '/'
    (3, "00002/000004.jpg;004;2018-03-14 10:53:35", None),         # extension in the image id
    (4, "", IndexError),                                           # blank line
])
def test_veriwild_bad_vehicle_info_line(tmp_path, index, bad, orig_error):
    split = write_veriwild(str(tmp_path), info=_replace(vw_info_lines(), index, bad))
    with pytest.raises(ValueError) as e:
        DATASET_REGISTRY.get("VeRiWild")(root=str(tmp_path))
    msg = str(e.value)
    # records start on line 2 (line 1 is the header)
    assert f"vehicle_info.txt:{index + 2}:" in msg and repr(bad) in msg, msg
    assert "'<vehicle id>/<image id>;<camera id>;<time>;...'" in msg
    if orig_error is not None:  # FastReID: a bare error, no file or line
        with pytest.raises(orig_error) as e:
            vw_unpatched(str(tmp_path), split)
        assert "vehicle_info.txt" not in str(e.value)


def test_veriwild_duplicate_image_id(tmp_path):
    lines = vw_info_lines()
    split = write_veriwild(str(tmp_path), info=lines + [lines[1].replace("00001/", "00004/")])
    with pytest.raises(ValueError) as e:
        DATASET_REGISTRY.get("VeRiWild")(root=str(tmp_path))
    msg = str(e.value)
    assert f"vehicle_info.txt:{len(lines) + 2}:" in msg and "'000002'" in msg and "line 3" in msg
    with pytest.raises(AssertionError) as e:  # FastReID: a bare assert
        vw_unpatched(str(tmp_path), split)
    assert str(e.value) == ""


def test_veriwild_vehicle_info_without_header(tmp_path):
    split = write_veriwild(str(tmp_path), header=False)
    with pytest.raises(ValueError) as e:
        DATASET_REGISTRY.get("VeRiWild")(root=str(tmp_path))
    assert "vehicle_info.txt:1:" in str(e.value) and "header" in str(e.value)
    assert repr(vw_info_lines()[0]) in str(e.value)
    # FastReID: silently drops the first image
    ds = vw_unpatched(str(tmp_path), split)
    assert "000001" not in ds.imgid2vid and len(ds.imgid2vid) == 7


@pytest.mark.parametrize("lines", [[], [VW_HEADER]])
def test_veriwild_empty_files(tmp_path, lines):
    write_veriwild(str(tmp_path), info=lines[1:], header=bool(lines))
    with pytest.raises(ValueError, match="holds no image record"):
        DATASET_REGISTRY.get("VeRiWild")(root=str(tmp_path))
    write_veriwild(str(tmp_path), train=[])
    with pytest.raises(ValueError, match="train_list.txt' is empty"):
        DATASET_REGISTRY.get("VeRiWild")(root=str(tmp_path))


def test_veriwild_listed_image_missing(tmp_path):
    split = write_veriwild(str(tmp_path), skip_images=("000008",))
    with pytest.raises(FileNotFoundError) as e:
        DATASET_REGISTRY.get("SmallVeRiWild")(root=str(tmp_path))
    msg = str(e.value)
    img = os.path.join(str(tmp_path), "VERI-Wild", "images", "00004", "000008.jpg")
    assert "1 of 3" in msg and img in msg and "test_3000.txt:2" in msg
    # FastReID: accepted; fails only when the batch holding it is loaded
    ds = vw_unpatched(str(tmp_path), split)
    items = ORIGINALS["VeRiWild.process_dir"](
        ds, os.path.join(split, "test_3000.txt"), is_train=False)
    assert len(items) == 3 and img in [p for p, _, _ in items]


# ------------------------------------------------------------------ idempotence
def test_patches_are_idempotent():
    from fastreid.data.datasets.veriwild import VeRiWild
    patched = [(Dataset, "check_before_run", "check_before_run"),
               (common, "read_image", "read_image"),
               (VeRi, "process_dir", "VeRi.process_dir"),
               (VehicleID, "process_dir", "VehicleID.process_dir"),
               (VeRiWild, "process_vehicle", "VeRiWild.process_vehicle"),
               (VeRiWild, "process_dir", "VeRiWild.process_dir")]
    before = [getattr(owner, name) for owner, name, _ in patched]
    tags = set(PATCHES) & {t for t, p in PATCHES.items() if p.concern == "datasets"}
    applied = list(APPLIED)
    patches_datasets.apply()
    patches_datasets.apply()
    assert [getattr(owner, name) for owner, name, _ in patched] == before
    assert applied == APPLIED and tags <= set(applied) and len(tags) == len(patched)
    # each wrapper wraps FastReID's original directly (never a wrapper of a wrapper)
    for owner, name, key in patched:
        assert getattr(owner, name).__wrapped__ is ORIGINALS[key], key
    import fastreid.data.data_utils as du
    assert du.read_image is common.read_image
