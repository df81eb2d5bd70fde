"""The end-to-end demo on built-in data: build a phantom set, segment it, evaluate, report.

Until the NAM/R-NAM issue lands, the segmenter is the training-free Hessian blob baseline
(:mod:`wsnodule_core.baselines.blob_filter`). Every step is a library call a user can script.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from wsnodule_core import __version__
from wsnodule_core.baselines.blob_filter import BlobFilterConfig, segment_blobs
from wsnodule_core.data.dataset import build_dataset, load_dataset
from wsnodule_core.errors import OutputExistsError
from wsnodule_core.evaluation import TABLE_COLUMNS, evaluate_cases
from wsnodule_core.io import write_mask
from wsnodule_core.reports import markdown_table, plot_size_breakdown, to_json

Progress = Callable[[str, int, int], None]
METHOD = "Hessian blob filter (no training)"


@dataclass(frozen=True)
class DemoResult:
    out_dir: Path
    metrics: dict[str, Any]
    table: str


def _check_out_dir(out: Path, overwrite: bool) -> None:
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise OutputExistsError(
            f"{out} already holds files; the demo will not overwrite them. Choose an empty or new "
            "folder with --out, or pass --overwrite to replace the demo's files there."
        )


def run_demo(
    out_dir: str | Path,
    *,
    n_cases: int = 12,
    size: str = "small",
    seed: int = 0,
    n_shapes: int = 120,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> DemoResult:
    """Build a phantom data set in ``out_dir/data``, segment every case, write the report.

    The baseline has no training, so every case of the set is held out and evaluated.
    Writes ``masks/<case>.nii.gz``, ``metrics.json``, ``report.md`` and
    ``figures/size_breakdown.png``; ``progress(stage, done, total)`` reports each stage.
    """
    out = Path(out_dir)
    _check_out_dir(out, overwrite)
    out.mkdir(parents=True, exist_ok=True)

    def stage(name: str) -> Callable[[int, int], None] | None:
        return (lambda done, total: progress(name, done, total)) if progress else None

    info = build_dataset(out / "data", source="phantom", n_cases=n_cases, size=size, seed=seed,
                         n_shapes=n_shapes, overwrite=overwrite, progress=stage("building the phantom data set"))
    dataset = load_dataset(info.path)
    entries = dataset.entries()
    config = BlobFilterConfig()

    def blobs(volume, lungs):
        lungs = np.zeros(volume.shape, bool) if lungs is None else lungs
        return {"mask": segment_blobs(volume, lungs, config).mask}

    def save(row, case, mask) -> None:
        write_mask(mask, case.image, out / "masks" / f"{case.case_id}.nii.gz", overwrite=overwrite)

    rows, _ = evaluate_cases(dataset.cases(), {METHOD: blobs}, slices="all", n_cases=len(entries),
                             progress=stage("segmenting and evaluating"), on_output=save)
    row = rows[METHOD]
    summary = {k: v for k, v in row.items() if k not in ("detection_3d", "size_breakdown")}
    bins = row["size_breakdown"]
    metrics = {
        "wsnodule_version": __version__,
        "data": {"source": "phantom", "n_cases": len(entries), "size": size, "seed": seed},
        "methods": {METHOD: row},
    }
    table = markdown_table({METHOD: summary}, TABLE_COLUMNS)
    to_json(metrics, out / "metrics.json", overwrite=overwrite)
    figure = plot_size_breakdown({METHOD: bins}, out / "figures" / "size_breakdown.png", overwrite=overwrite)
    _write_report(out / "report.md", table, metrics, figure.relative_to(out), overwrite)
    return DemoResult(out_dir=out, metrics=metrics, table=table)


def _write_report(path: Path, table: str, metrics: dict[str, Any], figure: Path, overwrite: bool) -> None:
    det = metrics["methods"][METHOD]["detection_3d"]
    data = metrics["data"]
    text = f"""# wsnodule demo report

wsnodule {metrics['wsnodule_version']}. Data: {data['n_cases']} procedural chest CT phantoms
(`{data['size']}` grid, seed {data['seed']}) with real LIDC-IDRI nodule shapes inserted, built in
`data/` (see `data/dataset.json`). Segmenter: {METHOD}, evaluated on every case (it is not trained).

## The NAM paper's Table 1 metrics (slice level) and 3D overlap

{table}
TPR, FPR, FPR_nodule, Dice, TP Dice and TP DOA follow the NAM paper's slice-level rules
(`docs/metrics.md`); Dice 3D, MSD and HD95 are per case.

## 3D per-nodule detection

{det['tp']} of {det['tp'] + det['fn']} nodules found, {det['fp']} false-positive components
({_fmt(det['fp_per_case'])} per case); TP Dice 3D {_fmt(det['tp_dice_3d'])}.

![TP Dice and TP DOA versus nodule size]({figure.as_posix()})
"""
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True to replace it.")
    path.write_text(text)


def _fmt(value: Any) -> str:
    return "-" if value is None or not np.isfinite(value) else f"{value:.2f}"
