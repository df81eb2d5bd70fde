"""The real-nodule data set: the LIDC-IDRI nodule VOIs as positive cases, crops of nodule-free real
lung as negative cases, split by patient (:func:`~wsnodule_core.data.builders.splits.patient_split`).

Every case is a small crop. A positive case is one VOI (its HU, its majority-vote mask, one nodule
record with the readers' ratings); a negative case is a crop of a whole real scan away from every
known lesion, with the shape and spacing of a VOI drawn from its own split, so positives and
negatives share their size and grid distributions. Crops carry no lung segmentation of their own:
their ``lungs`` layer is the whole crop. Negative cases name their centre (``negative_sites_xyz``),
so patch cutters centre negatives as they centre positives.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

from wsnodule_core.data.builders.common import Cancel, DatasetInfo, Progress, check_out_dir, write_document
from wsnodule_core.data.builders.splits import patient_split
from wsnodule_core.data.cases import Case
from wsnodule_core.data.dataset import SPLITS, case_entry
from wsnodule_core.data.insertion import NoduleRecord
from wsnodule_core.data.lidc.vois import LidcVoi, load_voi, read_voi_table, touches_in_plane_border
from wsnodule_core.data.nodule_free import (
    NoduleFreeSource,
    check_sources,
    cut_crop,
    load_source,
    sample_centres,
)
from wsnodule_core.data.nodule_shape import texture_class
from wsnodule_core.errors import BuildCancelled, DatasetBuildError

SOURCE = "lidc-voi"
CropGrid = tuple[tuple[int, ...], tuple[float, ...]]  # a crop's (shape, spacing), (z, y, x)


def build_lidc_voi_dataset(
    out_dir: str | os.PathLike,
    *,
    vois: str | os.PathLike | Sequence[LidcVoi] | None = None,
    sources: Sequence[NoduleFreeSource] | None = None,
    negatives_per_nodule: float = 1.0,
    hard_negatives_per_nodule: float = 0.0,
    n_patients: int | None = None,
    patient_ids: Sequence[str] | None = None,
    split_ratio: tuple[float, float, float] = (4, 1, 1),
    clearance_mm: float = 10.0,
    seed: int = 0,
    overwrite: bool = False,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> DatasetInfo:
    """Build the VOI data set in ``out_dir``.

    Parameters
    ----------
    vois
        The VOI folder (default ``$WSNODULE_DATA/lidc-vois``) or VOIs already read.
    sources
        Whole scans for the negatives (default :func:`~wsnodule_core.data.nodule_free.default_sources`
        of ``$WSNODULE_DATA``); each gives negatives to its own split only.
    negatives_per_nodule
        Negative crops per positive, per split, spread evenly over that split's sources (0: none).
    hard_negatives_per_nodule
        Further negative crops per positive centred on blob-like lung (where the Hessian blob filter
        seeds: vessel crossings, bronchial walls), the false positives a nodule classifier must learn to
        reject (0: none, the default).
    n_patients, patient_ids
        A subset: these patients, or ``n_patients`` drawn at random (in every split's proportion,
        the held-out LIDC-IDRI-0001/0002 kept when present).
    split_ratio
        Train : val : test shares of the patient split (the same for a patient in every real set).
    clearance_mm
        Least distance from a negative crop's corner to any known lesion.
    """
    from wsnodule_core.data.builders.splits import HELD_OUT_PATIENTS
    out = Path(out_dir)
    if not negatives_per_nodule >= 0 or not hard_negatives_per_nodule >= 0:
        raise DatasetBuildError(f"negatives_per_nodule and hard_negatives_per_nodule must be >= 0, got "
                                f"{negatives_per_nodule} and {hard_negatives_per_nodule}.")
    any_negatives = negatives_per_nodule > 0 or hard_negatives_per_nodule > 0
    table = list(vois) if isinstance(vois, (list, tuple)) else read_voi_table(vois)
    table = _subset(table, n_patients, patient_ids, np.random.default_rng(seed), HELD_OUT_PATIENTS)
    if sources is None and any_negatives:
        from wsnodule_core.data.nodule_free import default_sources

        sources = default_sources()
    sources = list(sources or []) if any_negatives else []
    check_sources(sources)
    splits = {v.name: patient_split(v.patient_id, split_ratio) for v in table}
    _check_negative_splits(splits, sources)
    check_out_dir(out, overwrite)
    rng = np.random.default_rng(seed)
    total = len(table) + len(sources)
    entries = []
    grids: dict[str, list[CropGrid]] = {split: [] for split in SPLITS}  # the nodule crops' grids, per split
    for done, voi in enumerate(table):
        _check_cancel(cancel, out, done)
        case = _positive_case(voi)
        grids[splits[voi.name]].append((case.image.shape, tuple(float(v) for v in case.image.spacing)))
        entries.append(_write_case(out, case, splits[voi.name], voi.patient_id,
                                   extra=_voi_facts(voi)))
        if progress is not None:
            progress(done + 1, total)
    for k, source in enumerate(sources):
        _check_cancel(cancel, out, len(table) + k)
        templates = grids[source.split]
        n = _share(int(round(negatives_per_nodule * len(templates))), sources, k)
        n_hard = _share(int(round(hard_negatives_per_nodule * len(templates))), sources, k)
        for case in _negative_cases(source, templates, n, rng, clearance_mm, n_hard=n_hard):
            hard = "_hard_" in case.case_id
            entries.append(_write_case(out, case, source.split, source.subject,
                                       extra={"note": source.note, **({"hard_negative": True} if hard else {})}))
        if progress is not None:
            progress(len(table) + k + 1, total)
    parameters = {"source": SOURCE, "vois": None if vois is None or isinstance(vois, (list, tuple)) else str(vois),
                  "negative_sources": [{"subject": s.subject, "path": str(s.path), "split": s.split,
                                        "kind": s.kind, "note": s.note} for s in sources],
                  "negatives_per_nodule": negatives_per_nodule, "n_patients": n_patients,
                  **({"hard_negatives_per_nodule": hard_negatives_per_nodule} if hard_negatives_per_nodule else {}),
                  "patient_ids": list(patient_ids) if patient_ids else None, "split_ratio": list(split_ratio),
                  "clearance_mm": clearance_mm, "seed": seed, "split": "patient_split (hash of the patient id)",
                  "lungs": "the whole crop (crops have no lung segmentation)"}
    return write_document(out, "wsnodule-lidc-vois", SOURCE, entries, parameters, overwrite)


def _check_cancel(cancel: Cancel | None, out: Path, done: int) -> None:
    if cancel is not None and cancel():
        raise BuildCancelled(f"building the VOI data set in {out} was cancelled after {done} case(s).")


def _subset(table: list[LidcVoi], n_patients: int | None, patient_ids: Sequence[str] | None,
            rng: np.random.Generator, held_out: Sequence[str]) -> list[LidcVoi]:
    patients = sorted({v.patient_id for v in table})
    if patient_ids:
        unknown = sorted(set(patient_ids) - set(patients))
        if unknown:
            raise DatasetBuildError(f"no VOI of the patient(s) {unknown[:5]}; check the ids (e.g. LIDC-IDRI-0001).")
        patients = sorted(set(patient_ids))
    if n_patients is not None:
        if n_patients < 1:
            raise DatasetBuildError(f"n_patients must be at least 1, got {n_patients}.")
        kept = [p for p in patients if p in held_out]
        others = [p for p in patients if p not in held_out]
        chosen = rng.permutation(others)[: max(0, n_patients - len(kept))]
        patients = sorted(kept + [str(p) for p in chosen])
    wanted = set(patients)
    return [v for v in table if v.patient_id in wanted]


def _share(total: int, sources: Sequence[NoduleFreeSource], k: int) -> int:
    """Source ``k``'s part of its split's ``total`` negatives (the remainder to the first ones)."""
    peers = [i for i, s in enumerate(sources) if s.split == sources[k].split]
    rank = peers.index(k)
    return total // len(peers) + (1 if rank < total % len(peers) else 0)


def _check_negative_splits(splits: dict[str, str], sources: Sequence[NoduleFreeSource]) -> None:
    if not sources:
        return
    covered = {s.split for s in sources}
    missing = [s for s in SPLITS if s in splits.values() and s not in covered]
    if missing:
        raise DatasetBuildError(
            f"no nodule-free scan for the split(s) {missing}: a split's negatives come from its own patients' "
            "scans. Give a source for each split that has nodules, or build without negatives (0 per nodule).")


def _positive_case(voi: LidcVoi) -> Case:
    from wsnodule_core.nodules import measure_nodules

    image, mask = load_voi(voi)
    (measured,) = measure_nodules(np.asarray(mask.array), image.spacing, by="labels")
    texture = voi.texture
    record = NoduleRecord(
        label=1, centre_zyx=measured.centroid_zyx,
        centre_xyz=tuple(float(v) for v in image.index_to_world(measured.centroid_zyx)),
        diameter_mm=voi.diameter_mm, volume_mm3=measured.volume_mm3, inserted_volume_mm3=measured.volume_mm3,
        texture=texture_class(texture) if texture is not None else "unknown",
        texture_rating=float(texture or 0.0), placement="real", lidc_annotation_ids=(), shape_id=voi.name,
        patient_id=voi.patient_id, slice_range=measured.slice_range)
    notes = ("the nodule touches the crop's border",) if touches_in_plane_border(np.asarray(mask.array)) else ()
    return Case(voi.name, image, mask.with_array(np.asarray(mask.array).astype(np.uint16)),
                np.ones(image.shape, bool), [record], SOURCE, negatives_ok=False, notes=notes)


def _voi_facts(voi: LidcVoi) -> dict:
    return {"voi": voi.name, "series_uid": voi.series_uid, "diameter_mm": round(voi.diameter_mm, 3),
            "ratings": voi.ratings, "diagnosis": voi.diagnosis}


def _negative_cases(source: NoduleFreeSource, templates: list[CropGrid], n: int, rng: np.random.Generator,
                    clearance_mm: float, n_hard: int = 0) -> list[Case]:
    """Up to ``n`` nodule-free crops of ``source`` centred on lung, then up to ``n_hard`` centred on blob-like
    lung (``<subject>_hard_<k>``), each on the grid of a nodule crop drawn from ``templates``."""
    if n + n_hard <= 0 or not templates:
        return []
    loaded = load_source(source)
    cases: list[Case] = []
    for hard, count, name in ((False, n, "free"), (True, n_hard, "hard")):
        placed: list[Case] = []
        for k, i in enumerate(rng.integers(len(templates), size=count) if count > 0 else []):
            shape, spacing = templates[i]
            centres = sample_centres(loaded, 1, shape, spacing, rng, clearance_mm=clearance_mm,
                                     avoid_xyz=[c.negative_sites_xyz[0] for c in placed], hard=hard)
            if not len(centres):
                continue
            crop = cut_crop(loaded.volume, centres[0], shape, spacing)
            placed.append(Case(f"{source.subject}_{name}_{k + 1}", crop, crop.with_array(np.zeros(shape, np.uint16)),
                               np.ones(shape, bool), [], f"nodule-free:{source.subject}", negatives_ok=True,
                               negative_sites_xyz=(tuple(float(v) for v in centres[0]),)))
        cases += placed
    return cases


def _write_case(out: Path, case: Case, split: str, subject: str, extra: dict) -> dict:
    from wsnodule_core.io.writers import write_mask, write_volume

    files = {"image": f"images/{case.case_id}.nii.gz", "mask": f"labels/{case.case_id}.nii.gz",
             "lungs": f"lungs/{case.case_id}.nii.gz"}
    write_volume(case.image, out / files["image"], overwrite=True)
    write_mask(np.asarray(case.mask.array), case.image, out / files["mask"], overwrite=True)
    write_mask(np.asarray(case.lungs, np.uint8), case.image, out / files["lungs"], overwrite=True)
    return {**case_entry(case, files, split, subject), **extra}

