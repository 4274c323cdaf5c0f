"""Clear errors for bad dataset input, patched into FastReID's data code from our side.

FastReID 1.4.0 reports bad dataset input late and obscurely. Measured here:

================================================  ===============================================
input                                             FastReID 1.4.0
================================================  ===============================================
dataset folder missing                            ``RuntimeError: "<path>" is not found`` (first
                                                  path only, no word on the expected layout)
image name that does not parse (VeRi)             ``AttributeError: 'NoneType' object has no
                                                  attribute 'groups'`` (no file named)
vehicle id > 776 or camera outside c001..c020     bare ``AssertionError``
``.png`` / ``.jpeg`` / ``.JPG`` files in a VeRi    silently ignored (``glob('*.jpg')``): training
folder                                            on part of the data
corrupt or truncated image                        ``OSError: image file is truncated`` in a
                                                  loader worker, no file named
malformed VehicleID list line                     ``IndexError`` / ``ValueError`` from ``int()``
VehicleID list naming images that do not exist    fails only when the batch holding the image is
                                                  loaded (possibly hours into training)
malformed VERI-Wild list or ``vehicle_info.txt``  ``IndexError`` / ``ValueError`` / ``KeyError`` /
line                                              bare ``AssertionError``, no file or line named
VERI-Wild ``vehicle_info.txt`` without header     its first record is silently dropped
VERI-Wild list naming images that do not exist    fails only when the batch holding the image is
                                                  loaded
VERI-Wild list line whose vehicle id differs      silently labelled with the list's id but read
from ``vehicle_info.txt``                         from the other vehicle's folder
================================================  ===============================================

:func:`apply` (run once by ``import fastreid_plugins.data``) wraps the responsible FastReID
functions so that each case raises an error that names the file (and line) and says what was
expected:

* ``fastreid.data.datasets.bases.Dataset.check_before_run`` -> :class:`DatasetNotFoundError`
  (a ``FileNotFoundError`` that is also a ``RuntimeError``, so code catching FastReID's error still
  works) listing every missing path and the expected layout of VeRi-776, the VehicleID family, the
  VERI-Wild family and VRIC (:data:`LAYOUTS`);
* ``fastreid.data.common.read_image`` (the reader ``CommDataset`` uses) -> ``FileNotFoundError``
  or :class:`ImageReadError` naming the image;
* ``fastreid.data.datasets.veri.VeRi.process_dir`` -> :func:`check_veri_dir` first (every entry
  must be a ``*.jpg`` file whose name parses; ``ValueError`` listing the offenders);
* ``fastreid.data.datasets.vehicleid.VehicleID.process_dir`` -> :func:`check_vehicleid_list`
  first (``ValueError`` naming file and line; ``FileNotFoundError`` listing missing images);
* ``fastreid.data.datasets.veriwild.VeRiWild.process_vehicle`` / ``.process_dir`` (also used by
  ``SmallVeRiWild``, ``MediumVeRiWild``, ``LargeVeRiWild``) -> :func:`check_veriwild_vehicle_info`
  and :func:`check_veriwild_list` first (same errors).

Policy, "never silently train on part of a dataset": an entry that FastReID would skip or
mislabel is an error, not a warning. The only entries tolerated in image folders are hidden files
(``.DS_Store``, ...) and ``Thumbs.db``, which are operating-system metadata, never images.

The patches that run these checks inside FastReID's dataset classes are
:mod:`fastreid_plugins.patches.datasets`.
"""

import os
import re
from typing import Any, Dict, Iterable, Optional, Sequence

from ..errors import ConfigError, DatasetError, DatasetNotFoundError, ImageReadError
from .root import datasets_root

__all__ = ["LAYOUTS", "DatasetNotFoundError", "ImageReadError", "dataset_root", "listing",
           "check_dataset_items", "check_identity_batches",
           "check_veri_dir", "check_vehicleid_list", "check_veriwild_vehicle_info",
           "check_veriwild_list", "expected_layout", "VERI_NAME_PATTERN"]

#: The expected folder layout per dataset family, keyed by FastReID class name; ``{root}`` is the
#: datasets root (``FASTREID_DATASETS``). Subclasses (e.g. ``SmallVehicleID``) use their base's.
LAYOUTS = {
    "VeRi": (
        "{root}/veri/                      (VeRi-776, Liu et al. ECCV 2016; the unzipped VeRi "
        "folder, renamed 'veri')\n"
        "    image_train/   <vehicle id>_c<camera>_<frame>_<n>.jpg, e.g. 0002_c002_00030600_0.jpg\n"
        "    image_query/   same naming (1,678 images in the full set)\n"
        "    image_test/    same naming (the gallery, 11,579 images)"),
    "VehicleID": (
        "{root}/vehicleid/                 (PKU VehicleID, Liu et al. CVPR 2016; the "
        "VehicleID_V1.0 folder, renamed 'vehicleid')\n"
        "    image/<image id>.jpg\n"
        "    train_test_split/train_list.txt        lines '<image id> <vehicle id>'\n"
        "    train_test_split/test_list_800.txt     SmallVehicleID (same line format)\n"
        "    train_test_split/test_list_1600.txt    MediumVehicleID\n"
        "    train_test_split/test_list_2400.txt    LargeVehicleID\n"
        "    train_test_split/test_list_13164.txt   VehicleID"),
    "VeRiWild": (
        "{root}/VERI-Wild/                 (VERI-Wild, Lou et al. CVPR 2019)\n"
        "    images/<vehicle id>/<image id>.jpg\n"
        "    train_test_split/train_list.txt        lines '<vehicle id>/<image id>'\n"
        "    train_test_split/vehicle_info.txt      header line, then "
        "'<vid>/<image id>;<camera>;...'\n"
        "    train_test_split/test_3000.txt, test_3000_query.txt     SmallVeRiWild\n"
        "    train_test_split/test_5000.txt, test_5000_query.txt     MediumVeRiWild\n"
        "    train_test_split/test_10000.txt, test_10000_query.txt   LargeVeRiWild / VeRiWild"),
    "VRIC": (
        "{root}/VRIC/                      (VRIC, Kanaci et al. GCPR 2018; the contents of the "
        "official VRIC.zip)\n"
        "    train_images/      54,808 images\n"
        "    probe_images/       2,811 images (the queries)\n"
        "    gallery_images/     2,811 images\n"
        "    vric_train.txt     lines '<image name> <id> <camera>', e.g. "
        "'MVI_20011_016_img00105.jpg 15 1'\n"
        "    vric_probe.txt     same format\n"
        "    vric_gallery.txt   same format"),
}

#: FastReID's VeRi loader reads ``(pid, camid)`` with this pattern.
VERI_NAME_PATTERN = re.compile(r"([\d]+)_c(\d\d\d)")
_VERI_EXPECTED = ("'<vehicle id>_c<3-digit camera 001-020>_<frame>_<n>.jpg' with vehicle id "
                  "0..776, e.g. '0002_c002_00030600_0.jpg'")
_OS_METADATA = ("Thumbs.db", "desktop.ini")


def _strip_eol(line):
    return line.rstrip("\r\n")


def listing(paths: Iterable[Any], limit: int = 10) -> str:
    paths = list(paths)
    more = f"\n  ... and {len(paths) - limit} more" if len(paths) > limit else ""
    return "\n  " + "\n  ".join(str(p) for p in paths[:limit]) + more


def expected_layout(dataset: Any, root: Optional[str] = None) -> Optional[str]:
    """The expected layout text for a dataset class or instance, or ``None`` if unknown.

    Args:
        dataset: a FastReID dataset class or instance (looked up along its MRO in
            :data:`LAYOUTS`).
        root (str): datasets root to show (default ``$FASTREID_DATASETS``).
    """
    cls = dataset if isinstance(dataset, type) else type(dataset)
    for base in cls.__mro__:
        if base.__name__ in LAYOUTS:
            return LAYOUTS[base.__name__].format(root=root if root is not None else datasets_root())
    return None


def dataset_root(ds: Any) -> str:
    """The datasets root a FastReID dataset instance was built with (from its ``dataset_dir``)."""
    ddir = getattr(ds, "dataset_dir", None)
    if isinstance(ddir, str) and ddir:
        parent = os.path.dirname(os.path.normpath(ddir))
        if parent:
            return parent
    return datasets_root()


# --------------------------------------------------------------------------------------------
# checks
# --------------------------------------------------------------------------------------------
def check_veri_dir(dir_path: str) -> None:
    """Refuse a VeRi-style image folder that FastReID would read only partly or mislabel.

    FastReID's ``VeRi.process_dir`` globs ``*.jpg`` (other files are silently skipped) and parses
    ``(\\d+)_c(\\d\\d\\d)`` from the *full path* (a non-matching name crashes with a bare
    ``AttributeError``; a matching parent folder name would label every image the same).

    Args:
        dir_path (str): ``image_train``, ``image_query`` or ``image_test`` folder.

    Raises:
        ValueError: the folder path itself matches the name pattern; it holds entries that are
            not ``*.jpg`` files (hidden files and ``Thumbs.db`` are ignored); a name does not parse
            or its vehicle id / camera is out of VeRi-776's range (0..776, c001..c020); it holds
            no image at all. Every message names the offending files (up to 10) and the pattern.
    """
    if VERI_NAME_PATTERN.search(os.path.join(dir_path, "")):
        raise ValueError(
            f"The folder path {dir_path!r} itself matches FastReID's VeRi name pattern "
            f"{VERI_NAME_PATTERN.pattern!r}, which FastReID searches in the full image path: every "
            "image would get its vehicle id and camera from the folder name. Move or rename the "
            "dataset folder.")
    not_jpg, bad_name, out_of_range, n_ok = [], [], [], 0
    for name in sorted(os.listdir(dir_path)):
        if name.startswith(".") or name in _OS_METADATA:
            continue
        path = os.path.join(dir_path, name)
        if not name.endswith(".jpg") or not os.path.isfile(path):
            not_jpg.append(path)
            continue
        m = VERI_NAME_PATTERN.search(name)
        if m is None:
            bad_name.append(path)
            continue
        pid, cam = int(m.group(1)), int(m.group(2))
        if not (0 <= pid <= 776 and 1 <= cam <= 20):
            out_of_range.append(f"{path}  (vehicle id {pid}, camera c{cam:03d})")
            continue
        n_ok += 1
    if not_jpg:
        raise ValueError(
            f"{len(not_jpg)} entries of the VeRi image folder {dir_path!r} are not '*.jpg' files; "
            "FastReID's VeRi loader reads only '*.jpg' and would silently train/test on the rest. "
            "Convert them to .jpg (lower-case extension) or move them out:" + listing(not_jpg))
    if bad_name:
        raise ValueError(
            f"{len(bad_name)} image names in {dir_path!r} do not match the VeRi-776 naming "
            f"{_VERI_EXPECTED} (FastReID's pattern {VERI_NAME_PATTERN.pattern!r}):"
            + listing(bad_name))
    if out_of_range:
        raise ValueError(
            f"{len(out_of_range)} image names in {dir_path!r} have a vehicle id or camera outside "
            f"VeRi-776's range (FastReID asserts 0 <= id <= 776 and 1 <= camera <= 20); expected "
            f"{_VERI_EXPECTED}:" + listing(out_of_range))
    if n_ok == 0:
        raise ValueError(f"The VeRi image folder {dir_path!r} holds no '*.jpg' image; expected "
                         f"files named {_VERI_EXPECTED}.")


def check_vehicleid_list(list_file: str, image_dir: str) -> None:
    """Refuse a VehicleID list file that FastReID would crash on late or read wrongly.

    FastReID's ``VehicleID.process_dir`` reads ``<image id> <vehicle id>`` per line (split on a
    single space, both integers) and builds ``image_dir/<image id>.jpg`` without checking that
    the image exists.

    Args:
        list_file (str): ``train_list.txt`` or ``test_list_*.txt``.
        image_dir (str): the ``image/`` folder.

    Raises:
        ValueError: a line is empty or not ``<image id> <vehicle id>`` with integer fields (the
            message names ``file:line``); the file has no line.
        FileNotFoundError: images named by the list do not exist (all counted, 10 listed).
    """
    def image_path(lineno, raw):
        parts = raw.strip().split(" ")
        if len(parts) < 2 or not (parts[0].isdigit() and parts[1].lstrip("-").isdigit()):
            raise ValueError(
                f"{list_file}:{lineno}: expected '<image id> <vehicle id>' (two integers "
                f"separated by one space, e.g. '0004014 0002'), got {_strip_eol(raw)!r}")
        return os.path.join(image_dir, f"{parts[0]}.jpg")

    _check_list_file(list_file, "VehicleID", image_path)


def _check_list_file(list_file, dataset, image_path):
    """Read a list file whose every line names one image: ``image_path(lineno, raw)`` raises
    ``ValueError`` for a bad line and returns the image path otherwise.

    Raises:
        ValueError: the file has no line (or ``image_path``'s error).
        FileNotFoundError: listed images do not exist (all counted, 10 listed with ``file:line``).
    """
    missing, n = [], 0
    with open(list_file) as f:
        for lineno, raw in enumerate(f, 1):
            path = image_path(lineno, raw)
            n += 1
            if not os.path.isfile(path):
                missing.append(f"{path}  ({os.path.basename(list_file)}:{lineno})")
    if n == 0:
        raise ValueError(f"The {dataset} list file {list_file!r} is empty.")
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of {n} images listed in {list_file!r} do not exist (a dataset "
            "must not be used partly; re-extract the images or fix the list):" + listing(missing))


#: A ``vehicle_info.txt`` record as FastReID's ``VeRiWild.process_vehicle`` reads it (after
#: stripping the line): ``<vehicle id>/<image id>`` and the camera id are the first two
#: ';'-separated fields; the rest (time, model, type, colour) is not read.
_VERIWILD_INFO = re.compile(r"([0-9]+)/([^/;.\s]+);\s*([0-9]+)\s*(?:;.*)?")
_VERIWILD_INFO_EXPECTED = ("a header line ('id/image;Camera ID;Time;Model;Type;Color'), then one "
                           "line per image '<vehicle id>/<image id>;<camera id>;<time>;...' with "
                           "integer vehicle and camera ids, e.g. '00001/000001;018;...'")
#: A ``train_test_split/*.txt`` list line as ``VeRiWild.process_dir`` reads it.
_VERIWILD_LIST = re.compile(r"([0-9]+)/([^/.\s]+)(?:\.jpg)?")
_VERIWILD_LIST_EXPECTED = "'<vehicle id>/<image id>' (integer vehicle id), e.g. '00001/000001'"


def check_veriwild_vehicle_info(info_file: str) -> Dict[str, str]:
    """Refuse a VERI-Wild ``vehicle_info.txt`` that FastReID would crash on or read wrongly.

    FastReID's ``VeRiWild.process_vehicle`` skips the first line (the header), then reads
    ``<vehicle id>/<image id>;<camera id>;...`` per line with ``split`` (a malformed line is a bare
    ``IndexError``, or a ``ValueError`` from ``int(camera)`` only once a list names the image), and
    asserts that image ids are unique (bare ``AssertionError``). A file without the header line
    silently loses its first image.

    Args:
        info_file (str): ``train_test_split/vehicle_info.txt``.

    Returns:
        dict: image id -> vehicle id (the string as written), as FastReID's ``imgid2vid``.

    Raises:
        ValueError: the first line is a record, not the header; a line does not parse (the message
            names ``file:line``, the text and the expected format); an image id appears twice
            (both lines named); the file holds no record.
    """
    imgid2vid, first_line = {}, {}
    with open(info_file) as f:
        for lineno, raw in enumerate(f, 1):
            m = _VERIWILD_INFO.fullmatch(raw.strip())
            if lineno == 1:
                if m is not None:
                    raise ValueError(
                        f"{info_file}:1: expected the header line "
                        "'id/image;Camera ID;Time;Model;Type;Color', got the record "
                        f"{_strip_eol(raw)!r}; FastReID skips the first line, so this image would "
                        "be silently dropped. Restore the header line.")
                continue
            if m is None:
                raise ValueError(f"{info_file}:{lineno}: expected {_VERIWILD_INFO_EXPECTED}; "
                                 f"got {_strip_eol(raw)!r}")
            vid, imgid = m.group(1), m.group(2)
            if imgid in first_line:
                raise ValueError(
                    f"{info_file}:{lineno}: image id {imgid!r} already appears on line "
                    f"{first_line[imgid]}; image ids must be unique (FastReID asserts it).")
            first_line[imgid] = lineno
            imgid2vid[imgid] = vid
    if not imgid2vid:
        raise ValueError(f"The VERI-Wild vehicle info file {info_file!r} holds no image record; "
                         f"expected {_VERIWILD_INFO_EXPECTED}.")
    return imgid2vid


def check_veriwild_list(list_file: str, image_dir: str, imgid2vid: Dict[str, str],
                        vehicle_info: str = "vehicle_info.txt") -> None:
    """Refuse a VERI-Wild list file that FastReID would crash on late or read wrongly.

    FastReID's ``VeRiWild.process_dir`` reads ``<vehicle id>/<image id>`` per line (``int()`` of the
    vehicle id, the image id up to the first '.'), looks the image up in ``vehicle_info.txt``
    (bare ``KeyError`` if absent), labels it with the list's vehicle id but reads
    ``images/<vehicle id from vehicle_info>/<image id>.jpg`` without checking that it exists.

    Args:
        list_file (str): ``train_list.txt``, ``test_*_query.txt`` or ``test_*.txt``.
        image_dir (str): the ``images/`` folder.
        imgid2vid (dict): image id -> vehicle id from ``vehicle_info.txt`` (FastReID's
            ``imgid2vid`` or :func:`check_veriwild_vehicle_info`'s result).
        vehicle_info (str): the vehicle info file, for the messages.

    Raises:
        ValueError: a line is not ``<vehicle id>/<image id>``, names an image that
            ``vehicle_info.txt`` lacks, or gives another vehicle id than ``vehicle_info.txt`` (the
            message names ``file:line``); the file has no line.
        FileNotFoundError: images named by the list do not exist (all counted, 10 listed).
    """
    def image_path(lineno, raw):
        where = f"{list_file}:{lineno}"
        m = _VERIWILD_LIST.fullmatch(raw.strip())
        if m is None:
            raise ValueError(f"{where}: expected {_VERIWILD_LIST_EXPECTED}, got "
                             f"{_strip_eol(raw)!r}")
        vid, imgid = m.group(1), m.group(2)
        if imgid not in imgid2vid:
            raise ValueError(f"{where}: image id {imgid!r} (line {_strip_eol(raw)!r}) has no "
                             f"record in {vehicle_info!r}, which gives each image's camera.")
        if int(vid) != int(imgid2vid[imgid]):
            raise ValueError(
                f"{where}: the line {_strip_eol(raw)!r} gives vehicle {vid} but "
                f"{vehicle_info!r} gives vehicle {imgid2vid[imgid]} for image {imgid!r}; "
                "FastReID would label the image with one and read it from the other's folder.")
        return os.path.join(image_dir, imgid2vid[imgid], f"{imgid}.jpg")

    _check_list_file(list_file, "VERI-Wild", image_path)


# --------------------------------------------------------------------------------------------
# dataset items and identity batches (checked by the trainer)
# --------------------------------------------------------------------------------------------
def check_dataset_items(items: Sequence[tuple], split: str,
                        dataset_names: Sequence[str]) -> None:
    """Refuse an empty split or image paths that do not exist, naming the first offenders.

    Args:
        items (list[tuple]): FastReID ``(img_path, pid, camid, ...)`` tuples.
        split (str): "train" or "test", for the message.
        dataset_names (Sequence[str]): the configured dataset names, for the message.

    Raises:
        DatasetError (a ``ValueError``): the split is empty.
        DatasetNotFoundError (a ``FileNotFoundError``): some image files are missing (up to 10
            are listed).
    """
    names = ", ".join(dataset_names)
    if len(items) == 0:
        raise DatasetError(f"The {split} split of dataset(s) {names} is empty: no image was found. "
                         f"Check FASTREID_DATASETS={datasets_root()!r} "
                         "and the dataset's folder layout.")
    missing = [it[0] for it in items if not os.path.isfile(it[0])]
    if missing:
        listed = "\n  ".join(missing[:10])
        raise DatasetNotFoundError(f"{len(missing)} of {len(items)} {split} images of {names} "
                                   f"do not exist, e.g.:\n  {listed}")


def check_identity_batches(items: Sequence[tuple], ims_per_batch: int, num_instance: int,
                           world_size: int = 1, sampler: str = "the sampler") -> None:
    """Refuse batch settings an identity (PK) sampler can never fill: FastReID's
    ``NaiveIdentitySampler`` / ``BalancedIdentitySampler`` then loop forever without yielding a
    batch, and training hangs at its first iteration with no message.

    A PK batch (Hermans et al., "In Defense of the Triplet Loss for Person Re-Identification",
    2017) holds ``P = IMS_PER_BATCH / NUM_INSTANCE`` identities of ``K = NUM_INSTANCE`` images
    each, so the per-process batch must be a multiple of ``NUM_INSTANCE`` and the training set
    must have at least ``P`` identities.

    Args:
        items (list[tuple]): the training ``(img_path, pid, camid, ...)`` tuples.
        ims_per_batch (int): ``SOLVER.IMS_PER_BATCH`` (all processes together).
        num_instance (int): ``DATALOADER.NUM_INSTANCE``.
        world_size (int): number of training processes.
        sampler (str): the sampler's name, for the message.

    Raises:
        ConfigError (a ``ValueError``): naming the keys, their values and what would work.
    """
    ims, k, w = int(ims_per_batch), int(num_instance), int(world_size)
    if k < 1:
        raise ConfigError(f"DATALOADER.NUM_INSTANCE must be >= 1 for {sampler}, got {k}.")
    if ims % w:
        raise ConfigError(f"SOLVER.IMS_PER_BATCH={ims} is not divisible by the {w} training "
                         "processes: each process takes IMS_PER_BATCH / world size images.")
    mini = ims // w
    if mini % k:
        step = k * w
        lo, hi = (ims // step) * step, (ims // step + 1) * step
        hint = f"{lo} or {hi}" if lo > 0 else f"{hi}"
        raise ConfigError(
            f"SOLVER.IMS_PER_BATCH={ims} ({mini} per process) is not a multiple of "
            f"DATALOADER.NUM_INSTANCE={k}: {sampler} fills a batch with NUM_INSTANCE images per "
            f"identity and would never complete one (training would hang). Use an "
            f"IMS_PER_BATCH that is a multiple of {step}, e.g. {hint}.")
    num_pids = len({it[1] for it in items})
    need = ims // k
    if num_pids < need:
        raise ConfigError(
            f"{sampler} needs SOLVER.IMS_PER_BATCH / DATALOADER.NUM_INSTANCE = {ims} / {k} = "
            f"{need} training identities per batch, but the training set has {num_pids}: it "
            "would never fill a batch (training would hang). Lower SOLVER.IMS_PER_BATCH to at "
            f"most {num_pids * k} (a multiple of {k * w}) or raise DATALOADER.NUM_INSTANCE.")
