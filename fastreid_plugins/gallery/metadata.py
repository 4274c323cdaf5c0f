"""Per-image metadata of a vector gallery: camera, time, identity and free fields.

Two sources, the CSV winning where both give a field:

* VeRi-style file names ``<pid>_c<cam>_<frame>_<n>.jpg`` (e.g. ``0002_c002_00030600_0.jpg``):
  ``pid`` = 2, ``camera`` = ``"c002"``, ``time`` = 30600 (the number as the name carries it: a
  frame index / timestamp in the dataset's unit; VeRi's is a frame number);
* a CSV (``--metadata``) with a ``path`` column (matched to the gallery's image paths exactly,
  else by file name) and any other columns: ``camera`` (text), ``time`` (number; its unit is the
  user's) and free fields (kept as text, or as numbers when they read as numbers).

Importing this module imports nothing heavy (no numpy, torch or pymilvus).
"""

from __future__ import annotations

import csv
import os
import re
from typing import Any, Dict, Optional

from fastreid_plugins.errors import DatasetError, DatasetNotFoundError

__all__ = ["parse_veri_name", "read_metadata_csv", "image_payload", "VERI_NAME"]

#: ``<pid>_c<cam>_<frame>_<n>`` (VeRi-776 / VERI-Wild style crop names)
VERI_NAME = re.compile(r"^(\d+)_(c\d+)_(\d+)_(\d+)$")


def parse_veri_name(path: str) -> Dict[str, Any]:
    """``{"pid": int, "camera": "c002", "time": int}`` from a VeRi-style file name, else ``{}``.

    Args:
        path (str): an image path or file name, e.g. ``.../0002_c002_00030600_0.jpg``.
    """
    stem = os.path.splitext(os.path.basename(path))[0]
    m = VERI_NAME.match(stem)
    if not m:
        return {}
    return {"pid": int(m.group(1)), "camera": m.group(2), "time": int(m.group(3))}


def _value(key: str, text: str) -> Any:
    if key == "camera" or text == "":
        return text
    try:
        return int(text)
    except ValueError:
        pass
    try:
        return float(text)
    except ValueError:
        if key == "time":
            raise
        return text


def read_metadata_csv(path: str) -> Dict[str, Dict[str, Any]]:
    """Rows of a metadata CSV keyed by their ``path`` column (empty cells left out).

    Raises:
        DatasetNotFoundError: the file does not exist.
        DatasetError: no ``path`` column, or a ``time`` that is not a number (naming the row).
    """
    if not os.path.isfile(path):
        raise DatasetNotFoundError(f"Metadata CSV not found: {path!r}")
    out: Dict[str, Dict[str, Any]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or "path" not in reader.fieldnames:
            raise DatasetError(f"{path!r} has no 'path' column (columns: {reader.fieldnames}); "
                               "the first line must name the columns, one of them 'path'.")
        for line, row in enumerate(reader, start=2):
            key = row.pop("path")
            try:
                out[key] = {k: _value(k, v) for k, v in row.items()
                            if k and v is not None and v != ""}
            except ValueError:
                raise DatasetError(f"{path!r} line {line}: time {row.get('time')!r} is not a "
                                   "number.") from None
    return out


def image_payload(path: str, csv_rows: Optional[Dict[str, Dict[str, Any]]] = None
                  ) -> Dict[str, Any]:
    """The stored payload of one image: ``path``, ``name``, then the fields parsed from a
    VeRi-style name, then the CSV row of the path (exact path, else file name)."""
    payload: Dict[str, Any] = {"path": path, "name": os.path.basename(path)}
    payload.update(parse_veri_name(path))
    if csv_rows:
        row = csv_rows.get(path)
        if row is None:
            row = csv_rows.get(os.path.basename(path))
        if row:
            payload.update(row)
    return payload
