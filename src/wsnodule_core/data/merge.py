"""Merge data set folders into one, keeping chosen splits of each: e.g. the real VOI set's crops and the
train cases of real-texture hybrids, so that one training run sees both (``wsnodule data merge``).

Each case keeps its split, subject, nodules and slice labels; its files are hard-linked into the new
folder where the file system allows it, copied otherwise. Nothing in the sources is changed.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from wsnodule_core.data.dataset import SPLITS, dataset_document, load_dataset
from wsnodule_core.errors import InvalidDatasetError, UnknownSplitError

FILE_KEYS = ("image", "mask", "lungs")


@dataclass(frozen=True)
class MergeSource:
    """A data set folder and the splits of it to keep (all three by default)."""

    folder: Path
    splits: tuple[str, ...] = SPLITS

    @classmethod
    def parse(cls, text: str) -> MergeSource:
        """``DIR`` or ``DIR:SPLIT[,SPLIT...]`` (e.g. ``hybrids:train``)."""
        folder, _, splits = text.rpartition(":") if ":" in text else (text, "", "")
        chosen = tuple(s for s in splits.split(",") if s) or SPLITS
        unknown = [s for s in chosen if s not in SPLITS]
        if unknown:
            raise UnknownSplitError(f"{text!r}: unknown split(s) {unknown}; write DIR or DIR:SPLIT[,SPLIT] "
                                    f"with splits from {SPLITS}.")
        return cls(Path(folder), chosen)


def merge_datasets(out: str | os.PathLike, sources: Sequence[MergeSource], *, overwrite: bool = False) -> Path:
    """Write one data set folder ``out`` holding the chosen splits of every source; its dataset.json.

    Raises :class:`~wsnodule_core.errors.InvalidDatasetError` before writing anything when a source is
    not a data set, two kept cases share an id, or ``out`` is a source or a non-empty folder (without
    ``overwrite``).
    """
    out = Path(out)
    if len(sources) < 1:
        raise InvalidDatasetError("merge needs at least one data set folder.")
    datasets = [load_dataset(source.folder) for source in sources]
    for source, dataset in zip(sources, datasets):
        if out.resolve() == dataset.root.resolve():
            raise InvalidDatasetError(f"{out}: the output is one of the sources; give a new folder.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InvalidDatasetError(f"{out} is not empty; give a new folder (or --overwrite to write into it).")
    kept = [(dataset, entry) for source, dataset in zip(sources, datasets)
            for entry in dataset.entries() if entry["split"] in source.splits]
    seen: dict[str, Path] = {}
    for dataset, entry in kept:
        for name in (entry["case_id"], *(entry[k] for k in FILE_KEYS if entry.get(k))):
            if name in seen:
                raise InvalidDatasetError(f"case {entry['case_id']!r}: {name!r} is in both {seen[name]} and "
                                          f"{dataset.root}; merge data sets whose case ids differ.")
            seen[name] = dataset.root
    if not kept:
        raise InvalidDatasetError("the chosen splits of these data sets hold no case.")

    entries = [_link_case(dataset.root, entry, out) for dataset, entry in kept]
    parameters = {"source": "merge", "sources": [
        {"path": str(source.folder), "name": dataset.name, "splits": list(source.splits),
         "cases": sum(1 for d, _ in kept if d is dataset)} for source, dataset in zip(sources, datasets)]}
    document = dataset_document("wsnodule-merged", "merge", entries, parameters)
    document["description"] = "Merged from: " + "; ".join(f"{d.name} ({','.join(s.splits)})"
                                                        for s, d in zip(sources, datasets))
    (out / "dataset.json").write_text(json.dumps(document, indent=1))
    return out


def _link_case(root: Path, entry: dict, out: Path) -> dict:
    entry = dict(entry)
    for key in FILE_KEYS:
        if not entry.get(key):
            continue
        source = root / entry[key]
        if not source.exists():
            raise InvalidDatasetError(f"{source}: the {key} file of case {entry['case_id']} is missing; rebuild "
                                      "that data set first.")
        target = out / entry[key]
        target.parent.mkdir(parents=True, exist_ok=True)
        if target.exists():
            target.unlink()
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)
    return entry
