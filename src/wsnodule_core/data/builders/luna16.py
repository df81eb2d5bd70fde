"""LUNA16 data sets: patches around the annotated nodules of ``.mhd`` scans, and negatives."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from wsnodule_core.data.builders.common import Cancel, DatasetInfo, Progress, check_out_dir, write_document
from wsnodule_core.data.builders.splits import split_subjects
from wsnodule_core.errors import BuildCancelled, DatasetBuildError, OutputExistsError


def build_luna16_dataset(
    out_dir: str | os.PathLike,
    *,
    annotations: str | os.PathLike,
    scans_dir: str | os.PathLike,
    patch_size_mm: float = 32.0,
    patch_spacing_mm: float = 1.0,
    negatives_per_scan: int = 4,
    seed: int = 0,
    split_ratio: tuple[float, float, float] = (4, 1, 1),
    overwrite: bool = False,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> DatasetInfo:
    """LUNA16-style patches from the ``.mhd`` scans found (recursively) in ``scans_dir``.

    Each annotated nodule gives a positive patch centred on it; ``negatives_per_scan`` patches
    centred on random lung voxels (lungs from :func:`~wsnodule_core.data.lung.segment_lungs`)
    farther than the patch half-diagonal plus the radius from every nodule are negatives. Patches
    are resampled to ``patch_spacing_mm`` isotropic and saved per scan in ``patches/<uid>.npz``
    (``images`` (n, z, y, x) float32 HU, ``labels`` (n,), ``centres_xyz`` (n, 3)).
    """
    from wsnodule_core.data.luna16 import annotations_for_series, extract_patch, read_luna16_annotations, read_luna16_scan
    from wsnodule_core.data.lung import segment_lungs

    out = Path(out_dir)
    scans = sorted(Path(scans_dir).rglob("*.mhd")) if Path(scans_dir).is_dir() else []
    if not scans:
        raise DatasetBuildError(
            f"{scans_dir}: no LUNA16 scans (.mhd with .raw) found; give the folder holding the LUNA16 "
            "subsets (subset0 ... subset9) with --scans."
        )
    table = read_luna16_annotations(annotations)
    check_out_dir(out, overwrite)
    rng = np.random.default_rng(seed)
    size_vox = int(round(patch_size_mm / patch_spacing_mm))
    entries = []
    for done, path in enumerate(scans):
        if cancel is not None and cancel():
            raise BuildCancelled(f"building the LUNA16 patches in {out} was cancelled after {done} scan(s).")
        uid = path.name[: -len(".mhd")]
        volume = read_luna16_scan(path)
        nodules = annotations_for_series(table, uid)
        centres = [np.asarray(a.center_xyz_mm, float) for a in nodules]
        labels = [1] * len(centres)
        lungs = np.asarray(segment_lungs(volume).lungs, bool)
        candidates = np.argwhere(lungs)
        clearance = patch_size_mm * np.sqrt(3) / 2
        negatives = 0
        for index in rng.permutation(len(candidates))[: 50 * max(negatives_per_scan, 1)]:
            if negatives >= negatives_per_scan:
                break
            point = volume.index_to_world(candidates[index])
            if all(np.linalg.norm(point - c) > clearance + a.diameter_mm / 2 for c, a in zip(centres, nodules)):
                centres.append(point)
                labels.append(0)
                negatives += 1
        images = np.stack([np.asarray(extract_patch(volume, c, size_vox=size_vox, spacing=patch_spacing_mm).array,
                                      np.float32) for c in centres]) if centres else np.zeros((0, size_vox, size_vox, size_vox), np.float32)
        file = f"patches/{uid}.npz"
        (out / "patches").mkdir(parents=True, exist_ok=True)
        if (out / file).exists() and not overwrite:
            raise OutputExistsError(f"{out / file} exists; pass overwrite=True to replace it.")
        np.savez_compressed(out / file, images=images, labels=np.asarray(labels, np.int8),
                            centres_xyz=np.asarray(centres, float).reshape(-1, 3))
        entries.append({
            "case_id": uid, "image": None, "mask": None, "lungs": None, "patches": file, "subject": uid,
            "source": "luna16", "nodules": [{"diameter_mm": a.diameter_mm, "centre_xyz": list(a.center_xyz_mm),
                                              "placement": "real"} for a in nodules],
            "n_positive": int(sum(labels)), "n_negative": int(len(labels) - sum(labels)),
        })
        if progress is not None:
            progress(done + 1, len(scans))
    strata = {e["subject"]: str(int(bool(e["nodules"]))) for e in entries}
    split = split_subjects([e["subject"] for e in entries], strata, split_ratio, rng)
    for e in entries:
        e["split"] = split[e["subject"]]
    parameters = {"source": "luna16", "annotations": str(annotations), "scans_dir": str(scans_dir),
                  "patch_size_mm": patch_size_mm, "patch_spacing_mm": patch_spacing_mm,
                  "negatives_per_scan": negatives_per_scan, "seed": seed, "split_ratio": list(split_ratio)}
    return write_document(out, "wsnodule-luna16", "luna16", entries, parameters, overwrite)
