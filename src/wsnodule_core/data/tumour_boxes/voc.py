"""PASCAL-VOC box files (LabelImg's XML, as Lung-PET-CT-Dx ships them): every ``<object>`` with its
``<name>`` and ``<bndbox>`` (``xmin, ymin, xmax, ymax`` in pixels of the image).

``x`` is the column and ``y`` the row; the values are taken as 0-based pixel indices, both corners
inclusive (``docs/data.md`` says why). Only the standard library's ``xml.etree`` parses (expat >= 2.4
refuses entity-expansion bombs).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from wsnodule_core.errors import BoxFileError

_CORNERS = ("xmin", "ymin", "xmax", "ymax")


@dataclass(frozen=True)
class VocBox:
    """One ``<object>``: class ``name`` and corners in pixels (0-based, inclusive), ``x`` = column."""

    name: str
    xmin: int
    ymin: int
    xmax: int
    ymax: int


def _whole(text: str | None, tag: str, path: Path, k: int) -> int:
    if text is None or not text.strip():
        raise BoxFileError(f"{path}: <object> {k} has no <{tag}> in its <bndbox>; every box needs xmin, ymin, "
                           "xmax and ymax. Fix or remove the file.")
    try:
        value = float(text)
    except ValueError:
        raise BoxFileError(f"{path}: <{tag}> of <object> {k} is {text.strip()!r}, not a number; box corners "
                           "are pixel indices. Fix or remove the file.") from None
    if not math.isfinite(value) or value != round(value):
        raise BoxFileError(f"{path}: <{tag}> of <object> {k} is {text.strip()}; box corners are whole pixel "
                           "indices. Fix or remove the file.")
    return round(value)


def _size(root: ET.Element, tag: str, path: Path) -> int | None:
    text = root.findtext(f"size/{tag}")
    if text is None or not text.strip():
        return None
    try:
        return int(float(text))
    except ValueError:
        raise BoxFileError(f"{path}: <size><{tag}> is {text.strip()!r}, not a number. Fix or remove the "
                           "file.") from None


def read_voc_boxes(path: str | Path, *, rows: int | None = None, columns: int | None = None
                   ) -> tuple[VocBox, ...]:
    """The boxes of one PASCAL-VOC file, checked.

    Parameters
    ----------
    path
        The XML file.
    rows, columns
        The size of the image the file annotates (DICOM Rows and Columns): when given, every box must lie
        in it and the file's ``<size>`` (when present) must match it.

    Raises
    ------
    BoxFileError
        Not XML, not a VOC ``<annotation>``, no ``<object>``, a missing ``<bndbox>`` or corner, a corner that
        is not a whole number, ``xmin > xmax`` or ``ymin > ymax``, a box outside the image, another size.
    """
    path = Path(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise BoxFileError(f"{path}: not well-formed XML ({exc}); the file is damaged or not a PASCAL-VOC "
                           "box file. Download the annotations again or remove the file.") from None
    except OSError as exc:
        raise BoxFileError(f"{path}: cannot be read ({exc}).") from None
    if root.tag != "annotation":
        raise BoxFileError(f"{path}: the root element is <{root.tag}>, not a PASCAL-VOC <annotation>.")
    for tag, expected in (("width", columns), ("height", rows)):
        found = _size(root, tag, path)
        if expected is not None and found is not None and found != expected:
            raise BoxFileError(
                f"{path}: <size><{tag}> is {found} but the slice it names has {expected} "
                f"{'columns' if tag == 'width' else 'rows'}; the boxes were drawn on another image. Check "
                "that the file belongs to this slice.")
    objects = root.findall("object")
    if not objects:
        raise BoxFileError(f"{path}: holds no <object>, so no box; remove the file or add the box.")
    boxes = []
    for k, obj in enumerate(objects):
        bndbox = obj.find("bndbox")
        if bndbox is None:
            raise BoxFileError(f"{path}: <object> {k} has no <bndbox>; every object needs its box. Fix or "
                               "remove the file.")
        xmin, ymin, xmax, ymax = (_whole(bndbox.findtext(tag), tag, path, k) for tag in _CORNERS)
        if xmin > xmax or ymin > ymax:
            raise BoxFileError(f"{path}: <object> {k} has xmin {xmin} > xmax {xmax} or ymin {ymin} > ymax "
                               f"{ymax}; the corners are swapped. Fix the file.")
        for axis, lo, hi, size in (("x (column)", xmin, xmax, columns), ("y (row)", ymin, ymax, rows)):
            if size is not None and (lo < 0 or hi > size - 1):
                raise BoxFileError(
                    f"{path}: <object> {k} spans {axis} {lo}..{hi}, outside the slice's 0..{size - 1}; the "
                    "box belongs to another image or is damaged. Fix or remove the file.")
        boxes.append(VocBox((obj.findtext("name") or "").strip(), xmin, ymin, xmax, ymax))
    return tuple(boxes)
