"""Lung-PET-CT-Dx tumour boxes: the collection's per-slice PASCAL-VOC boxes as 3D boxes in world mm.

The collection folder (``$WSNODULE_DATA/lung-pet-ct-dx``) holds the images as TCIA downloads them,
``Lung-PET-CT-Dx/<subject>/<study>/<series>/*.dcm`` (subject ``Lung_Dx-A0001``), and the annotations,
``Annotation/<id>/<SOPInstanceUID>.xml`` (id ``A0001``): one file per boxed slice, named by the slice's
SOPInstanceUID. A patient may have several series (reconstructions of one acquisition): each file belongs
to the series holding its slice, found by indexing every DICOM header of the patient (no pixels read).

Each series with boxes is read with :func:`~wsnodule_core.io.readers.read_volume`, so the slice index of
a box is its index in the series' z-sorted volume and its world box comes from that volume's geometry.
The boxed slices of a series that are contiguous form one 3D tumour box (z: the run's slices; in-plane:
the union of their boxes); a skipped slice starts a new box. Two tumours boxed on the same slices thus
merge into one box (the collection boxes one tumour per patient).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from wsnodule_core.data.real_data import real_data_path
from wsnodule_core.data.tumour_boxes.boxes import SeriesBoxes, SliceBox, tumour_boxes
from wsnodule_core.data.tumour_boxes.voc import read_voc_boxes
from wsnodule_core.errors import (
    DataLookupError,
    InputPathNotFoundError,
    UnknownSliceError,
)
from wsnodule_core.io.readers import read_volume
from wsnodule_core.io.volume import Volume

IMAGES = "Lung-PET-CT-Dx"
ANNOTATIONS = "Annotation"
_TAGS = ["SOPInstanceUID", "SeriesInstanceUID", "Rows", "Columns"]


@dataclass(frozen=True)
class SliceRef:
    """Where a slice (by SOPInstanceUID) lives: its series, that series' folder, its size."""

    series_uid: str
    folder: Path
    rows: int
    columns: int


def default_root() -> Path:
    """``$WSNODULE_DATA/lung-pet-ct-dx``; raises when WSNODULE_DATA is not set."""
    return real_data_path("lung-pet-ct-dx/", instead="give the collection folder (the one holding "
                          "Lung-PET-CT-Dx/ and Annotation/) as root (--root DIR)")


def annotation_id(subject: str) -> str:
    """The annotation folder name of a subject: ``Lung_Dx-A0001`` -> ``A0001`` (an id stays as it is)."""
    return subject.rsplit("-", 1)[-1]


def index_slices(patient_folder: str | Path) -> dict[str, SliceRef]:
    """Every DICOM image under ``patient_folder`` (all studies and series), by SOPInstanceUID.

    Headers only (``stop_before_pixels``); files that are not DICOM are passed over. A slice UID found in
    two series is refused (:class:`~wsnodule_core.errors.DataLookupError`): its box would be ambiguous.
    """
    index: dict[str, SliceRef] = {}
    for path in sorted(p for p in Path(patient_folder).rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=_TAGS)
        except (InvalidDicomError, OSError, ValueError, EOFError):
            continue
        if "SOPInstanceUID" not in header or "SeriesInstanceUID" not in header or "Rows" not in header:
            continue
        ref = SliceRef(str(header.SeriesInstanceUID), path.parent, int(header.Rows), int(header.Columns))
        other = index.setdefault(str(header.SOPInstanceUID), ref)
        if other.series_uid != ref.series_uid:
            raise DataLookupError(
                f"{path}: slice (SOPInstanceUID) {header.SOPInstanceUID} is in two series, {other.series_uid} "
                f"({other.folder}) and {ref.series_uid}; a box file could not tell which it belongs to. Remove "
                "the copied or damaged series.")
    return index


def series_boxes(volume: Volume, xml_files: Iterable[str | Path], subject: str = "") -> SeriesBoxes:
    """The boxes of the files ``xml_files`` (named ``<SOPInstanceUID>.xml``) on ``volume``, a DICOM series
    read by :func:`~wsnodule_core.io.readers.read_volume` (its ``sop_instance_uids`` place each file).

    Raises
    ------
    UnknownSliceError
        A file names a slice that is not in ``volume``.
    BoxFileError
        A file is malformed or its box does not fit the slice.
    """
    uids = tuple(volume.metadata.extra.get("sop_instance_uids", ()))
    if not uids:
        raise DataLookupError(f"{volume.metadata.source_path or 'the volume'}: has no SOPInstanceUIDs (not read "
                              "from DICOM); slice boxes are placed by SOPInstanceUID, so read the DICOM series.")
    z_of = {uid: z for z, uid in enumerate(uids)}
    boxes: list[SliceBox] = []
    for path in map(Path, xml_files):
        z = z_of.get(path.stem)
        if z is None:
            raise UnknownSliceError(
                f"{path}: names slice {path.stem}, which is not in series {volume.metadata.series_uid} "
                f"({volume.metadata.source_path}); give the files of this series only.")
        for b in read_voc_boxes(path, rows=volume.shape[1], columns=volume.shape[2]):
            boxes.append(SliceBox(path.stem, z, (b.ymin, b.xmin), (b.ymax, b.xmax), b.name, str(path)))
    boxes.sort(key=lambda b: (b.z, b.lo_yx, b.hi_yx))
    return SeriesBoxes(subject, str(volume.metadata.series_uid), Path(volume.metadata.source_path or ""),
                       volume.shape, tuple(boxes), tumour_boxes(volume, boxes))


def _folders(root: Path) -> tuple[Path, Path]:
    if not root.is_dir():
        raise InputPathNotFoundError(f"{root}: no such folder. Give the Lung-PET-CT-Dx collection folder (the "
                                     f"one holding {IMAGES}/ and {ANNOTATIONS}/).")
    images, annotations = root / IMAGES, root / ANNOTATIONS
    for folder, what in ((images, "the DICOM images as TCIA downloads them"),
                         (annotations, "the annotation XML files, Annotation/<id>/<SOPInstanceUID>.xml")):
        if not folder.is_dir():
            raise InputPathNotFoundError(f"{folder}: no such folder; the collection folder {root} must hold "
                                         f"{folder.name}/ with {what}.")
    return images, annotations


def _subject_folders(images: Path, subjects: Sequence[str] | None) -> list[Path]:
    present = {annotation_id(p.name): p for p in sorted(images.iterdir()) if p.is_dir()}
    if subjects is None:
        return list(present.values())
    missing = [s for s in subjects if annotation_id(s) not in present]
    if missing:
        raise DataLookupError(f"{images}: no folder of subject(s) {', '.join(missing)}; have: "
                              f"{', '.join(p.name for p in present.values()) or 'none'}. Download them from TCIA.")
    return [present[annotation_id(s)] for s in subjects]


def _subject_boxes(patient: Path, annotations: Path) -> list[SeriesBoxes]:
    folder = annotations / annotation_id(patient.name)
    xmls = sorted(folder.glob("*.xml")) if folder.is_dir() else []
    if not xmls:
        raise DataLookupError(
            f"{patient.name}: no annotation files in {folder}; every patient of Lung-PET-CT-Dx has "
            "Annotation/<id>/<SOPInstanceUID>.xml. Add the collection's annotation files, or leave the patient "
            "out (subjects=[...], --subjects).")
    index = index_slices(patient)
    by_series: dict[str, list[Path]] = {}
    for xml in xmls:
        ref = index.get(xml.stem)
        if ref is None:
            raise UnknownSliceError(
                f"{xml}: names slice (SOPInstanceUID) {xml.stem}, which no DICOM file under {patient} holds. "
                "The file belongs to a series that was not downloaded or to another patient: download that "
                "series, or remove the file.")
        by_series.setdefault(ref.series_uid, []).append(xml)
    out = []
    for uid, files in by_series.items():
        ref = index[files[0].stem]
        out.append(series_boxes(read_volume(ref.folder, series_uid=uid), files, patient.name))
    return out


def read_tumour_boxes(root: str | Path | None = None, subjects: Sequence[str] | None = None, *,
                      progress: Callable[[int, int], None] | None = None) -> list[SeriesBoxes]:
    """The tumour boxes of Lung-PET-CT-Dx, one :class:`SeriesBoxes` per series that has boxes.

    Parameters
    ----------
    root
        The collection folder holding ``Lung-PET-CT-Dx/`` and ``Annotation/``; default
        ``$WSNODULE_DATA/lung-pet-ct-dx``.
    subjects
        Subjects to read (``Lung_Dx-A0001`` or ``A0001``); default every subject folder present.
    progress
        ``progress(done, total)`` over the subjects.

    Returns
    -------
    list of SeriesBoxes
        By subject, then series UID: the slice boxes (SOPInstanceUID, z in the series' volume, rows and
        columns inclusive, class name) and the 3D tumour boxes in world (x, y, z) LPS mm.

    Raises
    ------
    DataNotAvailableError, InputPathNotFoundError
        No root given and WSNODULE_DATA unset; a folder missing.
    DataLookupError
        A subject asked for is not there, or has no annotation files.
    UnknownSliceError
        A file names a slice no series of its patient holds.
    BoxFileError
        A file is malformed or its box does not fit its slice.

    Examples
    --------
    >>> from wsnodule_core.data.tumour_boxes import read_tumour_boxes
    >>> [(s.subject, len(s.slice_boxes)) for s in read_tumour_boxes(subjects=["A0001"])]  # doctest: +SKIP
    [('Lung_Dx-A0001', 11)]
    """
    images, annotations = _folders(Path(root) if root is not None else default_root())
    patients = _subject_folders(images, subjects)
    out: list[SeriesBoxes] = []
    for done, patient in enumerate(patients):
        out += sorted(_subject_boxes(patient, annotations), key=lambda s: s.series_uid)
        if progress is not None:
            progress(done + 1, len(patients))
    if not out:
        raise DataLookupError(f"{images}: no subject folders, so no boxes; download the collection's images.")
    return out
