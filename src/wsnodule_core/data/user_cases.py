"""Corrected masks as training data: one CT and its mask appended to a data set folder.

The folder gets the layout of :func:`wsnodule_core.data.builders.build_dataset` (``images/``,
``labels/``, ``lungs/`` as NIfTI and ``dataset.json``), so ``load_dataset``, the NAM slice
sets (``slices_from_dataset``) and ``wsnodule train`` read it like a built set. An existing
data set keeps every case it has: the new case's files are new files (never overwritten) and
``dataset.json`` is rewritten atomically with the case added.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from wsnodule_core.data.dataset import SPLITS, dataset_document, load_dataset, with_entries
from wsnodule_core.data.insertion import NoduleRecord
from wsnodule_core.errors import InvalidDatasetError, OutputExistsError
from wsnodule_core.io.volume import Volume, check_mask_matches
from wsnodule_core.nodules import measure_nodules, nodule_label_map

SOURCE = "user"
_CASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
_FOLDERS = (("image", "images"), ("mask", "labels"), ("lungs", "lungs"))


@dataclass(frozen=True)
class SavedCase:
    """What :func:`save_training_case` wrote: the case id, its files and the data set's size after it."""

    case_id: str
    folder: Path
    dataset_json: Path
    image: Path
    mask: Path
    lungs: Path
    n_nodules: int
    n_cases: int


def _open_document(folder: Path) -> dict | None:
    """The folder's dataset.json document, None for a new or empty folder."""
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder} is a file; give a folder for the training data set.")
    if (folder / "dataset.json").exists():
        return dict(load_dataset(folder).info)
    if folder.is_dir() and any(folder.iterdir()):
        raise InvalidDatasetError(
            f"{folder} holds files but no dataset.json, so it is not a wsnodule data set; choose an empty "
            "or new folder, or a data set folder made by wsnodule.")
    return None


def _files(case_id: str) -> dict[str, str]:
    return {key: f"{sub}/{case_id}.nii.gz" for key, sub in _FOLDERS}


def _choose_case_id(folder: Path, taken: set[str], case_id: str | None) -> str:
    def free(candidate: str) -> bool:
        return candidate not in taken and not any((folder / f).exists() for f in _files(candidate).values())

    if case_id is not None:
        if not _CASE_ID.fullmatch(case_id):
            raise InvalidDatasetError(
                f"case id {case_id!r} is not usable as a file name; use letters, digits, '_', '-' and '.', "
                "starting with a letter or digit.")
        if not free(case_id):
            raise OutputExistsError(
                f"{folder} already holds a case {case_id!r}; give another case id (or none, to number it).")
        return case_id
    number = 1
    while not free(f"{SOURCE}_{number:03d}"):
        number += 1
    return f"{SOURCE}_{number:03d}"


def _lung_mask(image: Volume, lungs) -> np.ndarray:
    if lungs is None:
        from wsnodule_core.data.lung import segment_lungs

        lungs = segment_lungs(image)
    lungs = getattr(lungs, "lungs", lungs)  # a LungSegmentation
    return np.asarray(check_mask_matches(lungs, image)) > 0


def _records(labels: np.ndarray, image: Volume, patient_id: str) -> list[NoduleRecord]:
    records = []
    for n in measure_nodules(labels, image.spacing, by="labels"):
        records.append(NoduleRecord(
            label=n.index,
            centre_zyx=n.centroid_zyx,
            centre_xyz=tuple(float(v) for v in image.index_to_world(n.centroid_zyx)),
            diameter_mm=n.longest_axial_diameter_mm,  # LIDC's (pylidc's) diameter: the longest axial one
            volume_mm3=n.volume_mm3,
            inserted_volume_mm3=n.volume_mm3,
            texture="unknown",
            texture_rating=0.0,
            placement=SOURCE,
            lidc_annotation_ids=(),
            shape_id="",
            patient_id=patient_id,
            slice_range=n.slice_range,
        ))
    return records


def save_training_case(
    folder: str | os.PathLike,
    image: Volume,
    mask: Volume | np.ndarray,
    *,
    case_id: str | None = None,
    split: str = "train",
    lungs: Volume | np.ndarray | None = None,
    by: str = "components",
    negatives_ok: bool = True,
    subject: str | None = None,
    name: str = "wsnodule-user",
    notes: Sequence[str] = (),
    progress: Callable[[int, int], None] | None = None,
) -> SavedCase:
    """Append ``image`` and its corrected ``mask`` to the data set in ``folder`` (created if new).

    Parameters
    ----------
    image
        The CT in HU; written with its geometry and data type.
    mask
        Nodule labels on ``image``'s grid (array or Volume). Stored as one label per nodule:
        3D connected components (``by="components"``) or one per label value (``by="labels"``).
    case_id
        Unique id (also the file names); default ``user_001``, ``user_002``, ... (the first free one).
    split
        ``"train"``, ``"val"`` or ``"test"``.
    lungs
        Lung mask on ``image``'s grid (array, Volume or ``LungSegmentation``); segmented with
        :func:`~wsnodule_core.data.lung.segment_lungs` when None (the NAM slices are lung crops).
    negatives_ok
        False when the scan may hold nodules that the mask leaves out: its slices without nodule
        voxels then give no negatives.
    subject
        Who the scan belongs to (cases of one subject stay in one split); default the image's
        patient id, else the case id.
    name
        The data set's name when the folder is new.
    progress
        ``progress(done, total)`` after each step (lungs, files, index).
    """
    if split not in SPLITS:
        raise InvalidDatasetError(f"split must be one of {SPLITS}, got {split!r}.")
    folder = Path(folder).expanduser()
    report = progress or (lambda done, total: None)
    labels, n_nodules = nodule_label_map(check_mask_matches(mask, image), by)
    document = _open_document(folder)
    entries = list(document["cases"]) if document is not None else []
    case_id = _choose_case_id(folder, {str(e["case_id"]) for e in entries}, case_id)
    lung_mask = _lung_mask(image, lungs)
    report(1, 3)

    from wsnodule_core.io.writers import write_mask, write_volume

    files = _files(case_id)
    written: list[Path] = []
    try:
        written.append(write_volume(image, folder / files["image"]))
        written.append(write_mask(labels, image, folder / files["mask"]))
        written.append(write_mask(lung_mask.astype(np.uint8), image, folder / files["lungs"]))
        report(2, 3)
        entry = _entry(case_id, files, split, subject, negatives_ok, notes, image, labels)
        json_path = _write_index(folder, document, name, entries + [entry])
    except BaseException:
        for path in written:  # files this call created: no half-written case is left behind
            path.unlink(missing_ok=True)
        raise
    report(3, 3)
    return SavedCase(case_id, folder, json_path, *(folder / files[k] for k, _ in _FOLDERS), n_nodules,
                     len(entries) + 1)


def _entry(case_id: str, files: dict, split: str, subject: str | None, negatives_ok: bool,
           notes: Sequence[str], image: Volume, labels: np.ndarray) -> dict:
    patient = image.metadata.patient_id or ""
    source_path = image.metadata.source_path
    return {
        "case_id": case_id,
        **files,
        "split": split,
        "subject": subject or patient or case_id,
        "source": SOURCE,
        "shape": list(image.shape),
        "spacing": [float(s) for s in image.spacing],
        "negatives_ok": bool(negatives_ok),
        "notes": ([f"image read from {source_path}"] if source_path else []) + list(notes),
        "nodules": [r.to_dict() for r in _records(labels, image, patient)],
        "slice_labels": (labels > 0).any(axis=(1, 2)).astype(int).tolist(),
    }


def _write_index(folder: Path, document: dict | None, name: str, entries: list[dict]) -> Path:
    """Write dataset.json with ``entries`` (atomically: a reader sees the old or the new index)."""
    from wsnodule_core.io.writers import write_atomically

    if document is None:
        document = dataset_document(name, SOURCE, entries, {"source": SOURCE})
        document["description"] = "CT scans with nodule masks drawn or corrected by hand (napari-wsnodule)."
        document["reference"] = "masks made by the user"
        document["licence"] = "as the user's CT scans"
    else:
        document = with_entries(document, entries)
    text = json.dumps(document, indent=1) + "\n"
    return write_atomically(folder / "dataset.json", True, lambda tmp: tmp.write_text(text))
