"""A small synthetic vehicle re-id dataset in VeRi-776 layout, for demos and learning checks.

``python -m fastreid_plugins.data.toy --out DIR`` writes::

    DIR/veri/image_train/<vid:04d>_c<cam:03d>_<frame:08d>_<n>.jpg   (train identities)
    DIR/veri/image_query/...                                      (test identities, 1 camera each)
    DIR/veri/image_test/...                                       (test identities, other cameras)
    DIR/veri/keypoint_orient_train.txt, keypoint_orient_test.txt  (VeRi-776 orientation labels)
    DIR/veri/toy_manifest.json                                    (parameters, counts, identities)

which FastReID's stock ``VeRi`` loader reads (``DATASETS.NAMES ("VeRi",)`` with
``FASTREID_DATASETS=DIR``).

What the images contain (rendered with PIL, no external assets):

* **Identities.** Each vehicle has a type (sedan, SUV, van, pickup, bus: body shape), a body colour
  and four fine details: a roof box, a body stripe, the wheel-rim colour and the licence-plate
  colour. Identities come in *look-alike pairs* that share type and colour and differ only in
  fine details (at least one of roof box / stripe / rims, which are visible from every side), so
  colour and shape alone cannot separate them.
* **Disjoint splits.** Train identities are ``1..train_ids``, test identities
  ``train_ids+1..train_ids+test_ids``: the test split measures generalisation to unseen vehicles.
* **Cameras.** Each camera has its own viewpoint (one of VeRi-776's 8 orientations: 0 front,
  1 rear, 2 left, 3 left-front, 4 left-rear, 5 right, 6 right-front, 7 right-rear; a vehicle
  driving the other way is seen rotated by 180 degrees), in-plane rotation, scale, brightness,
  colour cast, blur and background (ground colour, road band and lane marks). Frames of one track
  jitter position, scale, rotation and brightness.
* **Query/gallery.** Like the real VeRi-776 sample, every test identity has one query camera
  (which camera differs per identity) whose images go to ``image_query``; its images from the
  other cameras go to ``image_test``. Query and gallery images of an identity never share a
  camera.

Orientation labels follow VeRi-776's keypoint/orientation annotation (Wang et al., "Orientation
Invariant Feature Embedding and Spatial Temporal Regularization for Vehicle Re-identification",
ICCV 2017); the keypoints themselves are written as ``-1`` (not annotated).

The output is a deterministic function of the arguments (same seed, same pixels).
"""

import argparse
import json
import math
import os
import shutil
import sys
import time
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

__all__ = ["generate", "main", "ORIENTATIONS", "VEHICLE_TYPES"]

ORIENTATIONS = ("front", "rear", "left", "left-front", "left-rear", "right", "right-front",
                "right-rear")
# the same camera sees a vehicle driving the opposite way rotated by 180 degrees
_OPPOSITE = {0: 1, 1: 0, 2: 5, 5: 2, 3: 7, 7: 3, 4: 6, 6: 4}

VEHICLE_TYPES = ("sedan", "suv", "van", "pickup", "bus")
# side-view geometry in units of the body length: body height, cabin start/end (fraction of the
# length), cabin height, ground clearance; front-view width (fraction of the length)
_TYPE_GEOM = {
    "sedan": dict(body_h=0.17, cab0=0.28, cab1=0.72, cab_h=0.15, wheel_r=0.085, face_w=0.52),
    "suv": dict(body_h=0.22, cab0=0.22, cab1=0.92, cab_h=0.18, wheel_r=0.095, face_w=0.56),
    "van": dict(body_h=0.26, cab0=0.10, cab1=0.97, cab_h=0.24, wheel_r=0.085, face_w=0.55),
    "pickup": dict(body_h=0.20, cab0=0.20, cab1=0.50, cab_h=0.18, wheel_r=0.095, face_w=0.56),
    "bus": dict(body_h=0.34, cab0=0.02, cab1=0.98, cab_h=0.16, wheel_r=0.07, face_w=0.42),
}
_COLOURS = {
    "red": (200, 30, 35), "blue": (35, 65, 190), "white": (232, 232, 228), "black": (28, 28, 32),
    "silver": (155, 160, 168), "yellow": (232, 200, 40), "green": (40, 135, 60),
    "orange": (232, 118, 30), "brown": (112, 72, 42), "sky": (120, 180, 232),
}
_RIMS = {"silver": (185, 188, 192), "gold": (215, 170, 40), "red": (215, 35, 35),
         "blue": (40, 95, 225)}
_PLATES = {"white": (240, 240, 240), "yellow": (240, 210, 30), "blue": (30, 70, 200)}
_STRIPES = ("none", "single", "double")
_GLASS = (48, 62, 82)
_TYRE = (22, 22, 22)


# ------------------------------------------------------------------------------------------
# identities
# ------------------------------------------------------------------------------------------
def _make_identities(rng, vids):
    """Attributes per vehicle id; consecutive ids form look-alike pairs (same type and colour)."""
    combos = [(t, c) for t in VEHICLE_TYPES for c in _COLOURS]
    order = rng.permutation(len(combos))
    ids = {}
    used = set()
    for k in range(0, len(vids), 2):
        vtype, colour = combos[order[(k // 2) % len(combos)]]
        base = None
        for vid in vids[k:k + 2]:
            for _ in range(1000):
                det = (bool(rng.integers(2)), _STRIPES[rng.integers(3)],
                       list(_RIMS)[rng.integers(len(_RIMS))], list(_PLATES)[rng.integers(3)])
                # look-alike partner: must differ in a detail visible from every side
                if base is not None and det[:3] == base[:3]:
                    continue
                if (vtype, colour, det) not in used:
                    break
            used.add((vtype, colour, det))
            base = det if base is None else base
            ids[vid] = dict(type=vtype, colour=colour, roof_box=det[0], stripe=det[1],
                            rims=det[2], plate=det[3])
    return ids


def _contrast(rgb):
    return (25, 25, 25) if sum(rgb) > 380 else (238, 238, 238)


# ------------------------------------------------------------------------------------------
# vehicle rendering (on a transparent layer; cropped to its bounding box afterwards)
# ------------------------------------------------------------------------------------------
def _draw_side(draw, ident, x0, ground, length, front_left=True):
    """Side profile, front end at ``x0`` if ``front_left`` else at ``x0 + length``."""
    g = _TYPE_GEOM[ident["type"]]
    body = _COLOURS[ident["colour"]]
    L = length
    wr = g["wheel_r"] * L
    clear = 0.45 * wr
    body_top = ground - clear - g["body_h"] * L
    body_bot = ground - clear

    def X(f):  # fraction along the body, 0 = front
        return x0 + (f if front_left else 1.0 - f) * L

    # body (rounded box)
    xa, xb = sorted((X(0.0), X(1.0)))
    draw.rounded_rectangle([xa, body_top, xb, body_bot], radius=0.04 * L, fill=body)
    # cabin: trapezoid with slanted wind-/rear screens
    cab_top = body_top - g["cab_h"] * L
    c0, c1 = g["cab0"], g["cab1"]
    slope = 0.06 if ident["type"] not in ("van", "bus") else 0.01
    cab = [(X(c0), body_top), (X(c0 + slope * 1.6), cab_top), (X(c1 - slope), cab_top),
           (X(c1), body_top)]
    draw.polygon(cab, fill=body)
    # windows
    inset = 0.018 * L
    win_top, win_bot = cab_top + inset, body_top - 0.2 * inset
    if ident["type"] == "bus":
        n = 7
        for i in range(n):
            f0 = c0 + 0.02 + i * (c1 - c0 - 0.03) / n
            f1 = f0 + (c1 - c0 - 0.03) / n - 0.015
            xa_, xb_ = sorted((X(f0), X(f1)))
            draw.rectangle([xa_, win_top, xb_, win_bot], fill=_GLASS)
    else:
        mid = (c0 + c1) / 2
        for f0, f1 in ((c0 + slope * 1.6 + 0.015, mid - 0.01), (mid + 0.01, c1 - slope - 0.015)):
            xa_, xb_ = sorted((X(f0), X(f1)))
            draw.rectangle([xa_, win_top, xb_, win_bot], fill=_GLASS)
    if ident["type"] == "pickup":  # open bed edge
        xa_, xb_ = sorted((X(c1 + 0.03), X(0.97)))
        draw.rectangle([xa_, body_top - 0.03 * L, xb_, body_top], fill=body)
    # stripe along the body
    if ident["stripe"] != "none":
        sc = _contrast(body)
        y = body_top + 0.45 * (body_bot - body_top)
        h = 0.028 * L
        draw.rectangle([xa + 0.02 * L, y - h / 2, xb - 0.02 * L, y + h / 2], fill=sc)
        if ident["stripe"] == "double":
            draw.rectangle([xa + 0.02 * L, y + h, xb - 0.02 * L, y + 1.6 * h], fill=sc)
    # roof box
    if ident["roof_box"]:
        ra, rb = sorted((X(c0 + 0.25 * (c1 - c0)), X(c1 - 0.2 * (c1 - c0))))
        draw.rectangle([ra, cab_top - 0.05 * L, rb, cab_top], fill=(30, 30, 30))
    # lights
    lx = sorted((X(0.0), X(0.035)))
    draw.rectangle([lx[0], body_top + 0.02 * L, lx[1], body_top + 0.06 * L], fill=(250, 240, 170))
    rx = sorted((X(0.965), X(1.0)))
    draw.rectangle([rx[0], body_top + 0.02 * L, rx[1], body_top + 0.06 * L], fill=(210, 20, 20))
    # wheels with coloured rims
    rim = _RIMS[ident["rims"]]
    for f in (0.18, 0.82):
        cx, cy = X(f), ground - wr
        draw.ellipse([cx - wr, cy - wr, cx + wr, cy + wr], fill=_TYRE)
        draw.ellipse([cx - 0.55 * wr, cy - 0.55 * wr, cx + 0.55 * wr, cy + 0.55 * wr], fill=rim)


def _draw_face(draw, ident, x0, ground, length, front=True, squeeze=1.0):
    """Front (or rear) view; ``length`` = the body length (sets the scale), ``squeeze`` the
    horizontal foreshortening. Returns the face width."""
    g = _TYPE_GEOM[ident["type"]]
    body = _COLOURS[ident["colour"]]
    L = length
    W = g["face_w"] * L * squeeze
    wr = g["wheel_r"] * L
    clear = 0.45 * wr
    body_top = ground - clear - g["body_h"] * L
    body_bot = ground - clear
    cab_top = body_top - g["cab_h"] * L
    # wheels (dark blocks with a rim-coloured hub) under the body corners
    rim = _RIMS[ident["rims"]]
    for cx in (x0 + 0.12 * W, x0 + 0.88 * W):
        draw.rectangle([cx - 0.08 * W, ground - 2 * wr, cx + 0.08 * W, ground], fill=_TYRE)
        draw.rectangle([cx - 0.035 * W, ground - 1.4 * wr, cx + 0.035 * W, ground - 0.6 * wr],
                       fill=rim)
    draw.rounded_rectangle([x0, body_top, x0 + W, body_bot], radius=0.05 * W, fill=body)
    narrow = 0.08 * W if ident["type"] not in ("van", "bus") else 0.02 * W
    draw.polygon([(x0 + 0.04 * W, body_top), (x0 + 0.04 * W + narrow, cab_top),
                  (x0 + 0.96 * W - narrow, cab_top), (x0 + 0.96 * W, body_top)], fill=body)
    # wind-/rear screen
    ins = 0.05 * W
    draw.polygon([(x0 + 0.04 * W + ins, body_top - 0.2 * ins),
                  (x0 + 0.04 * W + narrow + ins, cab_top + ins),
                  (x0 + 0.96 * W - narrow - ins, cab_top + ins),
                  (x0 + 0.96 * W - ins, body_top - 0.2 * ins)], fill=_GLASS)
    # stripe over bonnet and roof (vertical band in the middle)
    if ident["stripe"] != "none":
        sc = _contrast(body)
        bw = 0.07 * W
        cx = x0 + 0.5 * W
        if ident["stripe"] == "single":
            draw.rectangle([cx - bw / 2, body_top, cx + bw / 2,
                            body_bot - 0.35 * (body_bot - body_top)],
                           fill=sc)
        else:
            for off in (-0.9 * bw, 0.9 * bw):
                draw.rectangle([cx + off - bw / 3, body_top, cx + off + bw / 3,
                                body_bot - 0.35 * (body_bot - body_top)], fill=sc)
    if ident["roof_box"]:
        draw.rectangle([x0 + 0.25 * W, cab_top - 0.05 * L, x0 + 0.75 * W, cab_top],
                       fill=(30, 30, 30))
    # lights
    lc = (250, 240, 170) if front else (210, 20, 20)
    lh = 0.05 * L
    for xa in (x0 + 0.05 * W, x0 + 0.77 * W):
        draw.rectangle([xa, body_top + 0.02 * L, xa + 0.18 * W, body_top + 0.02 * L + lh], fill=lc)
    # licence plate
    pw, ph = 0.3 * W, 0.055 * L
    py = body_bot - 0.25 * (body_bot - body_top)
    plate = _PLATES[ident["plate"]]
    draw.rectangle([x0 + 0.5 * W - pw / 2, py - ph / 2, x0 + 0.5 * W + pw / 2, py + ph / 2],
                   fill=plate)
    ink = (20, 20, 20) if ident["plate"] != "blue" else (240, 240, 240)
    draw.rectangle([x0 + 0.5 * W - 0.35 * pw, py - 0.12 * ph, x0 + 0.5 * W + 0.35 * pw,
                    py + 0.12 * ph], fill=ink)
    return W


def _render_vehicle(ident, orient, unit=220):
    """RGBA image of the vehicle seen from ``orient`` (VeRi-776 label), cropped to its bbox."""
    layer = Image.new("RGBA", (int(2.2 * unit), int(1.2 * unit)), (0, 0, 0, 0))
    draw = ImageDraw.Draw(layer)
    ground = 1.1 * unit
    name = ORIENTATIONS[orient]
    right = name.startswith("right")
    if name in ("front", "rear"):
        _draw_face(draw, ident, 0.3 * unit, ground, 1.6 * unit, front=(name == "front"))
    elif name in ("left", "right"):
        _draw_side(draw, ident, 0.1 * unit, ground, unit, front_left=True)
    else:  # oblique: a foreshortened side plus the front or rear face
        x, side_len, squeeze = 0.1 * unit, 0.9 * unit, 0.8
        if name.endswith("front"):  # front on the left of the side (for a left view)
            w = _draw_face(draw, ident, x, ground, side_len, front=True, squeeze=squeeze)
            _draw_side(draw, ident, x + w, ground, side_len, front_left=True)
        else:  # rear visible on the right end of a left view
            _draw_side(draw, ident, x, ground, side_len, front_left=True)
            _draw_face(draw, ident, x + side_len, ground, side_len, front=False, squeeze=squeeze)
    if right:
        layer = layer.transpose(Image.FLIP_LEFT_RIGHT)
    return layer.crop(layer.getbbox())


# ------------------------------------------------------------------------------------------
# cameras and images
# ------------------------------------------------------------------------------------------
def _make_cameras(rng, n):
    orients = rng.permutation(8)
    cams = []
    for c in range(n):
        ground = rng.integers(40, 200, size=3)
        cams.append(dict(
            orient=int(orients[c % 8]),
            angle=float(rng.uniform(-12, 12)),
            scale=float(rng.uniform(0.6, 0.85)),
            brightness=float(rng.uniform(0.55, 1.35)),
            tint=[float(v) for v in rng.uniform(0.85, 1.15, size=3)],
            blur=float(rng.choice([0.0, 0.0, 0.6, 1.0])),
            ground=[int(v) for v in ground],
            road=[int(v) for v in np.clip(ground * rng.uniform(0.3, 0.8) + rng.integers(0, 40),
                                          0, 255)],
            road_angle=float(rng.uniform(-35, 35)),
            road_width=float(rng.uniform(0.35, 0.7)),
            noise=float(rng.uniform(3, 10)),
        ))
    return cams


def _background(cam, size, rng):
    H, W = size
    img = Image.new("RGB", (W, H), tuple(cam["ground"]))
    draw = ImageDraw.Draw(img)
    a = math.radians(cam["road_angle"])
    cx, cy = W / 2 + rng.uniform(-0.05, 0.05) * W, H / 2
    dx, dy = math.cos(a) * 2 * max(H, W), math.sin(a) * 2 * max(H, W)
    nx, ny = -math.sin(a) * cam["road_width"] * H / 2, math.cos(a) * cam["road_width"] * H / 2
    draw.polygon([(cx - dx + nx, cy - dy + ny), (cx + dx + nx, cy + dy + ny),
                  (cx + dx - nx, cy + dy - ny), (cx - dx - nx, cy - dy - ny)],
                 fill=tuple(cam["road"]))
    # dashed lane marks
    for t in np.arange(-1.0, 1.0, 0.18):
        px, py = cx + t * dx * 0.5, cy + t * dy * 0.5
        draw.line([(px, py), (px + 0.05 * dx, py + 0.05 * dy)], fill=(225, 225, 215),
                  width=max(1, W // 60))
    return img


def _render_image(vehicle, cam, size, rng):
    """Paste ``vehicle`` onto the camera's background with per-frame jitter; returns uint8 HWC."""
    H, W = size
    ss = 2  # supersampling
    canvas = _background(cam, (H * ss, W * ss), rng)
    scale = cam["scale"] * rng.uniform(0.93, 1.07)
    vw, vh = vehicle.size
    # a tight detector box resized to the network's input: the vehicle fills the frame
    # (anisotropically), whatever its aspect ratio
    v = vehicle.resize((max(1, int(scale * W * ss)), max(1, int(scale * H * ss))), Image.BILINEAR)
    v = v.rotate(cam["angle"] + rng.uniform(-3, 3), resample=Image.BILINEAR, expand=True)
    ox = int((W * ss - v.size[0]) / 2 + rng.uniform(-0.06, 0.06) * W * ss)
    oy = int((H * ss - v.size[1]) / 2 + rng.uniform(-0.06, 0.06) * H * ss)
    canvas.paste(v, (ox, oy), v)
    canvas = canvas.resize((W, H), Image.BILINEAR)
    if cam["blur"] > 0:
        canvas = canvas.filter(ImageFilter.GaussianBlur(cam["blur"] * W / 128))
    x = np.asarray(canvas, dtype=np.float32)
    gain = cam["brightness"] * rng.uniform(0.92, 1.08) * np.asarray(cam["tint"], np.float32)
    x = x * gain + rng.normal(0, cam["noise"], size=x.shape)
    return np.clip(x, 0, 255).astype(np.uint8)


# ------------------------------------------------------------------------------------------
# dataset
# ------------------------------------------------------------------------------------------
_SUBDIRS = ("image_train", "image_query", "image_test")
_MANIFEST = "toy_manifest.json"


def _parse_size(text):
    try:
        h, w = (int(v) for v in str(text).lower().split("x"))
    except ValueError:
        raise ValueError(f"--size must look like HxW (e.g. 128x128), got {text!r}") from None
    return h, w


def _check_args(train_ids, test_ids, cams, images_per_cam, size):
    if train_ids < 2 or test_ids < 2:
        raise ValueError(f"need >= 2 train and >= 2 test identities, got train_ids={train_ids}, "
                         f"test_ids={test_ids}")
    if train_ids + test_ids > 776:
        raise ValueError(f"train_ids + test_ids must be <= 776 (VeRi-776's loader asserts "
                         f"0 <= vehicle id <= 776), got {train_ids + test_ids}")
    if not 2 <= cams <= 20:
        raise ValueError(f"cams must be in 2..20 (VeRi-776 has 20 cameras c001..c020 and the "
                         f"loader asserts 1 <= camid <= 20; query and gallery need two), "
                         f"got {cams}")
    if images_per_cam < 1:
        raise ValueError(f"images_per_cam must be >= 1, got {images_per_cam}")
    if min(size) < 16:
        raise ValueError(f"size must be at least 16x16, got {size[0]}x{size[1]}")


def generate(out_dir: str, train_ids: int = 24, test_ids: int = 12, cams: int = 4,
             images_per_cam: int = 3, seed: int = 0,
             size: Union[Tuple[int, int], str] = (128, 128), overwrite: bool = False,
             verbose: bool = False) -> Dict[str, Any]:
    """Write the toy dataset under ``out_dir/veri`` (VeRi-776 layout); see the module docstring.

    Args:
        out_dir (str): dataset root (what ``FASTREID_DATASETS`` should point at).
        train_ids (int): number of training identities (ids ``1..train_ids``).
        test_ids (int): number of unseen test identities (ids after the train ids).
        cams (int): number of cameras (2..20); every identity is seen by every camera.
        images_per_cam (int): frames per identity and camera.
        seed (int): random seed; the output is a deterministic function of all arguments.
        size (tuple[int, int] or str): image size (H, W), or ``"HxW"``.
        overwrite (bool): replace an existing toy dataset at ``out_dir/veri`` (only one this
            generator wrote, recognised by its ``toy_manifest.json``).
        verbose (bool): print a summary.

    Returns:
        dict: ``train``/``query``/``gallery`` image counts, ``train_ids``, ``test_ids``, ``cams``,
        ``seconds`` and ``dataset_dir``.

    Raises:
        ValueError: an argument is out of range.
        FileExistsError: ``out_dir/veri`` already holds images (and was not written by this
            generator, or ``overwrite`` is False).
    """
    if isinstance(size, str):
        size = _parse_size(size)
    size = (int(size[0]), int(size[1]))
    _check_args(train_ids, test_ids, cams, images_per_cam, size)
    t0 = time.perf_counter()
    root = os.path.join(out_dir, "veri")
    existing = [d for d in _SUBDIRS if os.path.isdir(os.path.join(root, d))
                and os.listdir(os.path.join(root, d))]
    if existing:
        ours = os.path.isfile(os.path.join(root, _MANIFEST))
        if not (overwrite and ours):
            why = ("pass overwrite=True (--overwrite) to replace it" if ours else
                   "it was not written by this generator (no toy_manifest.json): "
                   "refusing to touch it")
            raise FileExistsError(f"{root} already holds a dataset ({', '.join(existing)}); {why}.")
        for d in _SUBDIRS:
            shutil.rmtree(os.path.join(root, d), ignore_errors=True)
    for d in _SUBDIRS:
        os.makedirs(os.path.join(root, d), exist_ok=True)

    rng = np.random.default_rng(seed)
    train_vids = list(range(1, train_ids + 1))
    test_vids = list(range(train_ids + 1, train_ids + test_ids + 1))
    idents = _make_identities(rng, train_vids)
    idents.update(_make_identities(rng, test_vids))
    cameras = _make_cameras(rng, cams)
    cache = {}
    counts = {"train": 0, "query": 0, "gallery": 0}
    orient_lines = {"train": [], "test": []}
    no_kpts = " ".join(["-1"] * 40)
    for vid in train_vids + test_vids:
        is_train = vid <= train_ids
        query_cam = (vid + seed) % cams  # which camera is the query camera varies per identity
        for c, cam in enumerate(cameras):
            orient = cam["orient"] if rng.random() < 0.6 else _OPPOSITE[cam["orient"]]
            key = (vid, orient)
            if key not in cache:
                # drawn at about the 2x-supersampled output resolution (no wasted resizing)
                cache[key] = _render_vehicle(idents[vid], orient,
                                             unit=max(60, int(1.6 * max(size))))
            frame0 = int(rng.integers(1000, 90000)) * 10
            if is_train:
                split, sub = "train", "image_train"
            elif c == query_cam:
                split, sub = "query", "image_query"
            else:
                split, sub = "gallery", "image_test"
            for k in range(images_per_cam):
                name = f"{vid:04d}_c{c + 1:03d}_{frame0 + 5 * k:08d}_{k % 2}.jpg"
                img = _render_image(cache[key], cam, size, rng)
                Image.fromarray(img).save(os.path.join(root, sub, name), quality=92)
                counts[split] += 1
                orient_lines["train" if is_train else "test"].append(f"{name} {no_kpts} {orient}")
    for split, lines in orient_lines.items():
        with open(os.path.join(root, f"keypoint_orient_{split}.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    seconds = time.perf_counter() - t0
    result = dict(counts, train_ids=train_ids, test_ids=test_ids, cams=cams,
                  seconds=round(seconds, 3), dataset_dir=root)
    manifest = dict(generator="fastreid_plugins.data.toy",
                    params=dict(train_ids=train_ids, test_ids=test_ids, cams=cams,
                                images_per_cam=images_per_cam, seed=seed, size=list(size)),
                    counts=counts, cameras=cameras,
                    identities={str(k): v for k, v in idents.items()})
    with open(os.path.join(root, _MANIFEST), "w") as f:
        json.dump(manifest, f, indent=1)
    if verbose:
        _print_summary(result, size, seed)
    return result


def _print_summary(res, size, seed):
    print(f"Toy vehicle re-id dataset (VeRi-776 layout, seed {seed}, {size[0]}x{size[1]}) "
          f"written to {res['dataset_dir']} in {res['seconds']:.2f} s")
    print(f"  {'subset':8s} {'# ids':>6s} {'# images':>9s} {'# cameras':>10s}")
    print(f"  {'train':8s} {res['train_ids']:6d} {res['train']:9d} {res['cams']:10d}")
    print(f"  {'query':8s} {res['test_ids']:6d} {res['query']:9d} {'1 per id':>10s}")
    print(f"  {'gallery':8s} {res['test_ids']:6d} {res['gallery']:9d} {res['cams'] - 1:10d}")
    print(f"  Train and test identities are disjoint. Use it with "
          f"FASTREID_DATASETS={os.path.dirname(res['dataset_dir'])} DATASETS.NAMES '(\"VeRi\",)'")


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Command line: ``python -m fastreid_plugins.data.toy --out DIR [...]``; returns the counts.

    Exits with status 2 and a one-line message on a bad argument or an existing dataset.
    """
    p = argparse.ArgumentParser(prog="python -m fastreid_plugins.data.toy",
                                description="Write a small synthetic vehicle re-id dataset in "
                                            "VeRi-776 layout (DIR/veri/...).")
    p.add_argument("--out", required=True, help="dataset root (point FASTREID_DATASETS here)")
    p.add_argument("--train-ids", type=int, default=24)
    p.add_argument("--test-ids", type=int, default=12)
    p.add_argument("--cams", type=int, default=4)
    p.add_argument("--images-per-cam", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", default="128x128", help="HxW, default 128x128")
    p.add_argument("--overwrite", action="store_true",
                   help="replace a toy dataset previously written to DIR/veri")
    a = p.parse_args(argv)
    try:
        return generate(a.out, train_ids=a.train_ids, test_ids=a.test_ids, cams=a.cams,
                        images_per_cam=a.images_per_cam, seed=a.seed, size=_parse_size(a.size),
                        overwrite=a.overwrite, verbose=True)
    except (ValueError, FileExistsError) as e:
        p.exit(2, f"error: {e}\n")


if __name__ == "__main__":
    main(sys.argv[1:])
