"""What every data-set builder shares: its result, the output-folder check and writing dataset.json."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from wsnodule_core.data.dataset import SPLITS, dataset_document
from wsnodule_core.errors import OutputExistsError

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool]


@dataclass(frozen=True)
class DatasetInfo:
    """What a builder wrote."""

    path: Path
    json_path: Path
    n_cases: int
    split_counts: dict[str, int]
    n_nodules: int
    n_skipped: int


def check_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a file, or a non-empty folder unless ``overwrite``, as the data set's folder."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"{out_dir} is a file; give a folder for the data set.")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out_dir} is not empty; give an empty or new folder, or pass overwrite=True "
            "(--overwrite) to write over the data set in it."
        )


def write_document(out: Path, name: str, source: str, entries: list[dict], parameters: dict,
                   overwrite: bool) -> DatasetInfo:
    """Write ``out/dataset.json`` for these case ``entries`` and say what the folder holds."""
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "dataset.json"
    if json_path.exists() and not overwrite:
        raise OutputExistsError(f"{json_path} exists; pass overwrite=True to replace it.")
    document = dataset_document(name, source, entries, parameters)
    json_path.write_text(json.dumps(document, indent=1) + "\n")
    counts = {s: sum(1 for e in entries if e["split"] == s) for s in SPLITS}
    return DatasetInfo(out, json_path, len(entries), counts, sum(len(e["nodules"]) for e in entries), 0)
