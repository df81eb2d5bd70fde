"""Real LIDC-IDRI nodule VOIs: nodule-centred crops with their majority-vote masks and reader ratings.

The folder (``$WSNODULE_DATA/lidc-vois``) holds ``image/<patient>_R_<n>.nii.gz`` (int16 HU),
``nodule_mask/<same name>`` (0/1 on the same grid, world origin and spacing of the source scan)
and ``metadata.csv``, one row per crop: patient, nodule number, series UID, world centre and box,
diameter, the nine reader ratings (text and value) and a benign/malign diagnosis.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from wsnodule_core.data.real_data import real_data_path
from wsnodule_core.errors import (
    AnnotationFileError,
    EmptyVoiError,
    GeometryMismatchError,
    InputPathNotFoundError,
)
from wsnodule_core.io.volume import Volume

#: The reader ratings of ``metadata.csv`` (each has a text column and a ``<name>_value`` column).
VOI_RATINGS = ("Malignancy", "Calcification", "InternalStructure", "Lobulation", "Margin", "Sphericity",
               "Spiculation", "Subtlety", "Texture")
REQUIRED_COLUMNS = ("patient_id", "nodule_id", "seriesuid", "coordX", "coordY", "coordZ", "diameter_mm")
_BOX = ("bboxLowX", "bboxLowY", "bboxLowZ", "bboxHighX", "bboxHighY", "bboxHighZ")


@dataclass(frozen=True)
class LidcVoi:
    """One nodule crop: its files, patient, world centre (x, y, z) mm, diameter and reader ratings."""

    name: str
    patient_id: str
    nodule_id: int
    series_uid: str
    centre_xyz: tuple[float, float, float]
    diameter_mm: float
    image_path: Path
    mask_path: Path
    box_xyz: tuple[tuple[float, float, float], tuple[float, float, float]] | None = None
    ratings: dict[str, float] = field(default_factory=dict)
    rating_texts: dict[str, str] = field(default_factory=dict)
    diagnosis: str = ""

    @property
    def texture(self) -> float | None:
        """The readers' texture rating (1 ground glass ... 5 solid), when recorded."""
        return self.ratings.get("Texture")


def default_vois_root() -> Path:
    """``$WSNODULE_DATA/lidc-vois``; raises when WSNODULE_DATA is not set."""
    return real_data_path("lidc-vois/", instead="give the VOI folder (--vois DIR)")


def read_voi_table(root: str | os.PathLike | None = None) -> list[LidcVoi]:
    """The VOIs listed in ``root/metadata.csv`` (``root`` defaults to :func:`default_vois_root`).

    Raises
    ------
    InputPathNotFoundError
        When the folder, its ``metadata.csv``, or a listed image or mask file is missing.
    AnnotationFileError
        When a required column is missing or a row has a non-numeric or non-positive value.
    """
    folder = Path(root) if root is not None else default_vois_root()
    table = folder / "metadata.csv"
    if not folder.is_dir():
        raise InputPathNotFoundError(f"{folder}: no such VOI folder; give the folder holding image/, "
                                     "nodule_mask/ and metadata.csv.")
    if not table.is_file():
        raise InputPathNotFoundError(f"{table}: the VOI folder has no metadata.csv (one row per crop).")
    with table.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        missing = [c for c in REQUIRED_COLUMNS if c not in columns]
        if missing:
            raise AnnotationFileError(f"{table}: missing column(s) {missing} (found {columns}).")
        vois = [_voi(folder, table, line, {k.strip(): (v or "").strip() for k, v in row.items() if k})
                for line, row in enumerate(reader, start=2)]
    if not vois:
        raise AnnotationFileError(f"{table}: no VOI rows.")
    names = [v.name for v in vois]
    doubled = sorted({n for n in names if names.count(n) > 1})
    if doubled:
        raise AnnotationFileError(f"{table}: the crop(s) {doubled[:5]} are listed more than once.")
    return vois


def _voi(folder: Path, table: Path, line: int, row: dict[str, str]) -> LidcVoi:
    try:
        centre = tuple(float(row[c]) for c in ("coordX", "coordY", "coordZ"))
        diameter = float(row["diameter_mm"])
        nodule_id = int(row["nodule_id"])
        box = (tuple(float(row[c]) for c in _BOX[:3]), tuple(float(row[c]) for c in _BOX[3:])) \
            if all(row.get(c) for c in _BOX) else None
        ratings = {r: float(row[f"{r}_value"]) for r in VOI_RATINGS if row.get(f"{r}_value")}
    except ValueError as error:
        raise AnnotationFileError(f"{table}, line {line}: not a number ({error}).") from error
    if not row["patient_id"] or not np.all(np.isfinite(centre)) or not diameter > 0:
        raise AnnotationFileError(f"{table}, line {line}: needs a patient, a finite centre and a positive "
                                  "diameter_mm.")
    name = f"{row['patient_id']}_R_{nodule_id}"
    image, mask = folder / "image" / f"{name}.nii.gz", folder / "nodule_mask" / f"{name}.nii.gz"
    for kind, path in (("image", image), ("mask", mask)):
        if not path.is_file():
            raise InputPathNotFoundError(f"{path}: the {kind} of VOI {name} (metadata.csv line {line}) is "
                                         "missing; restore it or remove its row.")
    return LidcVoi(name, row["patient_id"], nodule_id, row["seriesuid"], centre, diameter, image, mask,
                   box, ratings, {r: row[r] for r in VOI_RATINGS if row.get(r)}, row.get("Diagnosis", ""))


def load_voi(voi: LidcVoi) -> tuple[Volume, Volume]:
    """The crop's HU image and its 0/1 nodule mask (uint8), on one grid.

    Raises
    ------
    GeometryMismatchError
        When the mask's grid (shape, spacing, origin, direction) is not the image's.
    EmptyVoiError
        When the mask holds no nodule voxel.
    """
    from wsnodule_core.io.readers import read_volume

    image, mask = read_volume(voi.image_path), read_volume(voi.mask_path)
    if not image.same_geometry(mask):
        raise GeometryMismatchError(
            f"{voi.mask_path}: the mask's grid (shape {mask.shape}, spacing {mask.spacing}, origin "
            f"{mask.origin}) is not its image's (shape {image.shape}, spacing {image.spacing}, origin "
            f"{image.origin}); the VOI's image and mask must share one grid.")
    array = np.asarray(mask.array) > 0
    if not array.any():
        raise EmptyVoiError(f"{voi.mask_path}: the nodule mask of VOI {voi.name} is empty; a VOI needs its "
                            "nodule's voxels (remove the row or restore the mask).")
    return image, mask.with_array(array.astype(np.uint8))


def touches_in_plane_border(mask: np.ndarray) -> bool:
    """True when a VOI mask ``(z, y, x)`` reaches its crop's in-plane edge (the nodule may be cut there;
    every crop holds all of its nodule's slices, so z is always reached)."""
    return bool(mask[:, 0].any() or mask[:, -1].any() or mask[:, :, 0].any() or mask[:, :, -1].any())
