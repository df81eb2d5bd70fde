"""Tumour boxes as a JSON file (what ``wsnodule data tumour-boxes`` writes), and read back.

The file holds, per series: subject, series UID and folder, grid shape ``(z, y, x)``, the 3D tumour boxes
(``lo``/``hi`` world ``(x, y, z)`` LPS mm, outer voxel faces; class name; boxed slice indices) and the slice
boxes (SOPInstanceUID, ``z``, ``lo_yx``/``hi_yx`` rows and columns inclusive, class name, source file).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from wsnodule_core.data.tumour_boxes.boxes import SeriesBoxes, SliceBox, WorldBox
from wsnodule_core.errors import BoxFileError, OutputExistsError

FORMAT = "wsnodule-tumour-boxes"
VERSION = 1


def _series_dict(s: SeriesBoxes) -> dict[str, Any]:
    return {
        "subject": s.subject, "series_uid": s.series_uid, "folder": str(s.folder), "shape": list(s.shape),
        "tumours": [{"lo": list(t.lo), "hi": list(t.hi), "name": t.name, "slices": list(t.slices)}
                    for t in s.tumours],
        "slice_boxes": [{"sop_uid": b.sop_uid, "z": b.z, "lo_yx": list(b.lo_yx), "hi_yx": list(b.hi_yx),
                         "name": b.name, "source": b.source} for b in s.slice_boxes],
    }


def write_tumour_boxes(path: str | Path, series: Sequence[SeriesBoxes], *, overwrite: bool = False) -> Path:
    """Write ``series`` to the JSON file ``path`` (an existing file only with ``overwrite=True``)."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {"format": FORMAT, "version": VERSION,
           "frame": "world (x, y, z) mm, patient LPS; boxes span the outer faces of their voxels",
           "series": [_series_dict(s) for s in series]}
    path.write_text(json.dumps(doc, indent=1) + "\n")
    return path


def read_tumour_boxes_json(path: str | Path) -> list[SeriesBoxes]:
    """The series and boxes of a file written by :func:`write_tumour_boxes`."""
    path = Path(path)
    if not path.is_file():
        raise BoxFileError(f"{path}: no such file; write one with 'wsnodule data tumour-boxes --out {path}'.")
    try:
        doc = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BoxFileError(f"{path}: not a JSON file ({exc}); write it again.") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or doc.get("version") != VERSION:
        raise BoxFileError(f"{path}: not a {FORMAT} file of version {VERSION}; write it again with "
                           "'wsnodule data tumour-boxes'.")
    try:
        return [SeriesBoxes(
            str(s["subject"]), str(s["series_uid"]), Path(s["folder"]), tuple(int(v) for v in s["shape"]),
            tuple(SliceBox(str(b["sop_uid"]), int(b["z"]), tuple(b["lo_yx"]), tuple(b["hi_yx"]), str(b["name"]),
                           str(b.get("source", ""))) for b in s["slice_boxes"]),
            tuple(WorldBox(tuple(t["lo"]), tuple(t["hi"]), str(t["name"]), tuple(t["slices"])) for t in s["tumours"]),
        ) for s in doc["series"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise BoxFileError(f"{path}: a series entry is incomplete or has a bad value ({type(exc).__name__}: "
                           f"{exc}); write the file again.") from None
