"""An edited nodule mask as annotators hand it on: one label map (one id per nodule) and a table.

:func:`annotation_export` numbers the nodules of a mask 1..N (26-connected components of the
foreground, or one per label value with ``by="labels"``) in the order of
:func:`wsnodule_core.nodules.measure_nodules` (by each nodule's first voxel: slice, then row, then
column), so the ids are the "#" the plugin's nodule table shows. Each nodule gets a row: its centre
in world mm (patient LPS, through the mask's origin, spacing and direction), equivalent and longest
axial diameter, volume, voxel count, the method that made it and whether the annotator edited it.
:func:`write_annotation_export` writes the label map (NIfTI, NRRD or MetaImage, geometry kept) and
the table as CSV beside it (``nodules.nii.gz`` -> ``nodules.csv``), never over an existing file
unless asked.

Examples
--------
>>> from wsnodule_core import read_volume
>>> from wsnodule_core.data.annotation_export import annotation_export, write_annotation_export
>>> mask = read_volume("corrected.nii.gz")                                # doctest: +SKIP
>>> export = annotation_export(mask, source_method="blob-refine", model_mask=read_volume("model.nii.gz"))
>>> write_annotation_export(export.labels, export.rows, "annotation.nii.gz")  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from wsnodule_core.errors import GeometryMismatchError, InvalidVolumeError
from wsnodule_core.io.formats import FORMATS, require_format
from wsnodule_core.io.volume import Volume, check_same_grid
from wsnodule_core.io.writers import check_not_input, check_output_path, write_atomically, write_mask
from wsnodule_core.nodules import measure_nodules, nodule_label_map

CSV_COLUMNS = ("id", "centre_x_mm", "centre_y_mm", "centre_z_mm", "equivalent_diameter_mm",
               "longest_axial_diameter_mm", "volume_mm3", "voxels", "first_slice", "last_slice",
               "source_method", "edited")
DICOM_SEG_SUFFIX = ".dcm"
EDITED_TEXT = {True: "yes", False: "no", None: "unknown"}
_CONNECTIVITY_26 = np.ones((3, 3, 3), bool)


@dataclass(frozen=True)
class NoduleRow:
    """One nodule of an annotation export (``id`` is its value in the label map).

    ``centre_xyz_mm`` is the centroid of its voxels in world ``(x, y, z)`` mm; ``edited`` is None
    when it is not known.
    """

    id: int
    centre_xyz_mm: tuple[float, float, float]
    equivalent_diameter_mm: float
    longest_axial_diameter_mm: float
    volume_mm3: float
    voxels: int
    slice_range: tuple[int, int]
    source_method: str
    edited: bool | None

    def csv_values(self) -> list[str]:
        """The row's cells in :data:`CSV_COLUMNS` order (mm to 0.01, mm³ to 0.1)."""
        x, y, z = self.centre_xyz_mm
        return [str(self.id), f"{x:.2f}", f"{y:.2f}", f"{z:.2f}", f"{self.equivalent_diameter_mm:.2f}",
                f"{self.longest_axial_diameter_mm:.2f}", f"{self.volume_mm3:.1f}", str(self.voxels),
                str(self.slice_range[0]), str(self.slice_range[1]), self.source_method,
                EDITED_TEXT[self.edited]]


@dataclass(frozen=True, eq=False)
class AnnotationExport:
    """The merged label map (uint16, ids 1..N, the mask's geometry) and one row per id."""

    labels: Volume
    rows: tuple[NoduleRow, ...]


def _per_id(value, ids: Sequence[int], what: str):
    """A whole-mask value, or a mapping id -> value with an entry for every id."""
    if not isinstance(value, Mapping):
        return {i: value for i in ids}
    missing = sorted(set(ids) - set(value))
    if missing:
        raise InvalidVolumeError(f"{what} gives no value for nodule id(s) {missing}; give one per nodule "
                                 "(ids 1..N as annotation_export numbers them) or one for the whole mask.")
    return {i: value[i] for i in ids}


def edited_nodules(ids_map: np.ndarray, ids: Sequence[int], mask: np.ndarray,
                   model_mask: np.ndarray) -> dict[int, bool]:
    """For each nodule of ``ids_map``: True when its voxels differ from the model's.

    A nodule is unedited when it is exactly the union of the model's components (26-connected,
    foreground of ``model_mask``) that it overlaps, with the same label values; painted, erased,
    relabelled or newly drawn nodules are edited.
    """
    model_mask = np.asarray(model_mask)
    if model_mask.shape != mask.shape:
        raise GeometryMismatchError(
            f"the model's mask has shape {model_mask.shape} but the edited mask {mask.shape}; give the "
            "model's mask on the same grid (the unedited layer or file).")
    model_ids, _ = ndimage.label(model_mask != 0, structure=_CONNECTIVITY_26)
    model_boxes = ndimage.find_objects(model_ids)
    boxes = ndimage.find_objects(ids_map)

    def model_size(j: int) -> int:
        return int(np.count_nonzero(model_ids[model_boxes[j - 1]] == j))

    out: dict[int, bool] = {}
    for k in ids:
        box = boxes[k - 1]
        inside = ids_map[box] == k
        touched = np.unique(model_ids[box][inside])
        same = (touched.size > 0 and touched[0] != 0
                and sum(model_size(int(j)) for j in touched) == int(np.count_nonzero(inside))
                and np.array_equal(mask[box][inside], model_mask[box][inside]))
        out[k] = not same
    return out


def _foreground_box(*arrays: np.ndarray | None) -> tuple[slice, slice, slice]:
    """The smallest box holding every non-zero voxel of the arrays (one voxel when there is none)."""
    given = [a for a in arrays if a is not None]
    shape = given[0].shape
    found = np.zeros(shape, bool)
    for a in given:
        found |= a != 0
    box = []
    for axis in range(3):
        hit = np.flatnonzero(found.any(axis=tuple(i for i in range(3) if i != axis)))
        box.append(slice(int(hit[0]), int(hit[-1]) + 1) if hit.size else slice(0, 1))
    return tuple(box)


def annotation_export(mask: Volume, *, source_method: str | Mapping[int, str] = "",
                      edited: bool | Mapping[int, bool] | None = None,
                      model_mask: np.ndarray | Volume | None = None, by: str = "components") -> AnnotationExport:
    """The merged label map and per-nodule table of an edited mask.

    Parameters
    ----------
    mask
        The (edited) mask: binary or labelled, on its CT's grid (its geometry gives the centres).
    source_method
        What made the mask (e.g. ``"nam:fine"``, ``"manual"``): one text, or one per nodule id.
    edited
        Whether the annotator edited it: one flag for the whole mask or one per nodule id.
    model_mask
        The unedited model mask on the same grid: a nodule whose voxels differ from it is edited.
        Give ``edited`` or ``model_mask``, not both; neither leaves ``edited`` unknown.
    by
        ``"components"`` (26-connected foreground; touching labels are one nodule) or ``"labels"``
        (one nodule per label value).
    """
    if edited is not None and model_mask is not None:
        raise InvalidVolumeError("give either edited (flags) or model_mask (compared voxel by voxel), not both.")
    array = np.asarray(mask.array)
    model = None
    if model_mask is not None:
        if isinstance(model_mask, Volume):
            check_same_grid(model_mask, mask, "the model's mask")
        model = np.asarray(getattr(model_mask, "array", model_mask))
        if model.shape != array.shape:
            raise GeometryMismatchError(
                f"the model's mask has shape {model.shape} but the edited mask {array.shape}; give the "
                "model's mask on the same grid (the unedited layer or file).")
    # masks are sparse: label and measure inside the box holding every nodule (the same order and ids)
    box = _foreground_box(array, model)
    offset = np.array([s.start for s in box], float)
    crop, crop_model = array[box], None if model is None else model[box]
    crop_labels, n = nodule_label_map(crop, by=by)
    ids = list(range(1, n + 1))
    if crop_model is not None:
        flags = edited_nodules(crop_labels, ids, crop, crop_model)
    else:
        flags = _per_id(edited, ids, "edited")
    methods = _per_id(source_method, ids, "source_method")
    rows = []
    for m in measure_nodules(crop, mask.spacing, by=by):
        centroid = np.asarray(m.centroid_zyx) + offset
        centre = mask.index_to_world(centroid)
        rows.append(NoduleRow(
            id=m.index, centre_xyz_mm=tuple(float(c) for c in centre),
            equivalent_diameter_mm=m.equivalent_diameter_mm, longest_axial_diameter_mm=m.longest_axial_diameter_mm,
            volume_mm3=m.volume_mm3, voxels=m.n_voxels,
            slice_range=(m.slice_range[0] + box[0].start, m.slice_range[1] + box[0].start),
            source_method=str(methods[m.index]), edited=None if flags[m.index] is None else bool(flags[m.index])))
    labels = np.zeros(array.shape, crop_labels.dtype)
    labels[box] = crop_labels
    return AnnotationExport(mask.with_array(labels), tuple(rows))


def table_path(path: str | os.PathLike) -> Path:
    """The CSV beside a label map: its name without the volume extension, plus ``.csv``."""
    path = Path(path).expanduser()
    name = path.name
    for suffix in sorted((*FORMATS, DICOM_SEG_SUFFIX), key=len, reverse=True):
        if name.lower().endswith(suffix):
            return path.with_name(name[: -len(suffix)] + ".csv")
    return path.with_suffix(".csv")


def table_csv(rows: Iterable[NoduleRow]) -> str:
    """The rows as CSV text with a header line (:data:`CSV_COLUMNS`)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        writer.writerow(row.csv_values())
    return out.getvalue()


def _check_table(labels: np.ndarray, rows: Sequence[NoduleRow]) -> None:
    if labels.dtype.kind not in "biu" or (labels.size and labels.min() < 0):
        raise InvalidVolumeError("the label map must hold non-negative integer ids (0 background).")
    boxes = ndimage.find_objects(labels if labels.dtype.kind in "iu" else labels.astype(np.uint8))
    present = {i + 1 for i, box in enumerate(boxes) if box is not None}
    listed = [row.id for row in rows]
    if len(set(listed)) != len(listed) or set(listed) != present:
        raise InvalidVolumeError(
            f"the table lists ids {sorted(listed)} but the label map holds {sorted(present)}; make both with "
            "annotation_export from the same mask.")


def write_annotation_export(label_volume: Volume, table: Sequence[NoduleRow], path: str | os.PathLike, *,
                            overwrite: bool = False, inputs: Iterable[str | os.PathLike] = ()) -> tuple[Path, Path]:
    """Write the label map to ``path`` (its geometry kept) and the table as CSV beside it.

    ``path`` ends in a volume format's extension (NIfTI, NRRD, MetaImage) or in ``.dcm`` for a
    DICOM-SEG (one segment per id; ``label_volume`` must then carry its DICOM series' metadata).

    Both outputs are checked before anything is written: an existing file is refused unless
    ``overwrite``, an output that is one of ``inputs`` (the CT, the edited mask) always, and so is a
    folder that cannot be written to. Returns ``(label map path, CSV path)``.
    """
    path = check_output_path(path, overwrite)
    is_seg = path.name.lower().endswith(DICOM_SEG_SUFFIX)
    if not is_seg:
        require_format(path, "write")
    csv_path = check_output_path(table_path(path), overwrite)
    check_not_input(path, inputs)
    check_not_input(csv_path, inputs)
    array = np.asarray(label_volume.array)
    _check_table(array, table)
    if is_seg:
        from wsnodule_core.io.dicom_seg import write_dicom_seg

        written = write_dicom_seg(array, label_volume, path, overwrite=overwrite)
    else:
        written = write_mask(array, label_volume, path, overwrite=overwrite)
    text = table_csv(sorted(table, key=lambda row: row.id))
    write_atomically(csv_path, overwrite, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return written, csv_path


def read_table(path: str | os.PathLike) -> list[dict[str, str]]:
    """The rows of an exported CSV as dictionaries keyed by :data:`CSV_COLUMNS`."""
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def labels_on_grid(mask: Volume, reference: Volume) -> Volume:
    """``mask`` on ``reference``'s grid: itself when it is there already, else resampled (nearest
    neighbour, 0 outside it), e.g. a flow-guidance patch mask onto its CT."""
    from wsnodule_core.io.volume import geometry_differences

    if not geometry_differences(mask, reference):
        return reference.with_array(np.asarray(mask.array))
    from wsnodule_core.image.resample import resample_to_grid

    moved = resample_to_grid(mask, reference, interpolator="nearest", fill=0)
    return reference.with_array(np.asarray(moved.array).astype(np.asarray(mask.array).dtype, copy=False))


__all__ = [
    "CSV_COLUMNS",
    "AnnotationExport",
    "NoduleRow",
    "annotation_export",
    "edited_nodules",
    "labels_on_grid",
    "read_table",
    "table_csv",
    "table_path",
    "write_annotation_export",
]
