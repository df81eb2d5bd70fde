"""The demo's training part on built-in data: build a phantom set, train NAM from slice labels, segment
and evaluate the held-out test split.

A phantom data set with real LIDC shapes, the NAM 1-GAP classifier trained from slice labels only
(recipe :mod:`wsnodule_core.nam.recipes`), NAM/R-NAM coarse and fine segmentation of the held-out test
split with the best checkpoint (``best.pt``, chosen on the validation split, loaded through
:func:`~wsnodule_core.segmentation.load_segmenter` as ``wsnodule segment`` does), and the training-free
Hessian blob filter on the same cases as the reference row. Every step is a library call a user can script.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from wsnodule_core.data.builders import build_dataset
from wsnodule_core.data.dataset import load_dataset
from wsnodule_core.demo.common import BLOB_METHOD, Progress, fmt, slug, stage_callback
from wsnodule_core.evaluation import TABLE_COLUMNS, evaluate_cases
from wsnodule_core.io import write_mask
from wsnodule_core.nam.recipes import get_recipe
from wsnodule_core.nam.train import train_classifier
from wsnodule_core.reports import markdown_table, plot_size_breakdown
from wsnodule_core.segmentation import BlobSegmenter, load_segmenter
from wsnodule_core.training.callbacks import TrainCallbacks

NAM_METHOD = "1-GAP"


@dataclass(frozen=True)
class PhantomPart:
    """The training part's ``metrics`` (metrics.json's ``"phantom"`` section), ``table`` and ``report``."""

    metrics: dict[str, Any]
    table: str
    report: str


def run_phantom(
    out: Path,
    *,
    recipe: str = "cpu_demo",
    n_cases: int | None = None,
    size: str | None = None,
    seed: int | None = None,
    epochs: int | None = None,
    max_steps_per_epoch: int | None = None,
    overwrite: bool = False,
    progress: Progress | None = None,
) -> PhantomPart:
    """Build the recipe's phantom set in ``out/data``, train NAM, segment and evaluate the test split.

    ``n_cases``, ``size`` (a phantom size preset instead of the recipe's grid), ``seed``, ``epochs`` and
    ``max_steps_per_epoch`` override the recipe. Writes ``checkpoints/nam-1gap/{best,last}.pt``,
    ``masks/<row>/<case>.nii.gz`` and ``figures/size_breakdown.png``.
    """
    plan = get_recipe(recipe)
    data = plan.data
    if n_cases is not None:
        data = replace(data, n_cases=n_cases)
    if size is not None:
        data = replace(data, size=size, shape=None, spacing=None)
    if seed is not None:
        data = replace(data, seed=seed)
    train_changes = {k: v for k, v in (("epochs", epochs), ("max_steps_per_epoch", max_steps_per_epoch))
                     if v is not None}
    if train_changes:
        plan = plan.with_train(**train_changes)

    info = build_dataset(out / "data", **data.build_kwargs(), overwrite=overwrite,
                         progress=stage_callback(progress, "phantom: building the data set"))
    report_step = stage_callback(progress, "phantom: training the NAM classifier (slice labels only)")
    trained = train_classifier(
        info.path, out / "checkpoints" / "nam-1gap", plan.train, overwrite=overwrite,
        callbacks=TrainCallbacks(step_fn=(lambda step, total, loss: report_step(step, total)) if report_step else None),
    )
    dataset = load_dataset(info.path)
    test_entries = dataset.entries("test")
    # the checkpoint validation chose, with its own crop and slice threshold (the recipe's other settings)
    nam = load_segmenter(trained.best_path or trained.last_path, trained.device, name=NAM_METHOD,
                         config=plan.segment)

    def save(row, case, mask) -> None:
        write_mask(mask, case.image, out / "masks" / slug(row) / f"{case.case_id}.nii.gz", overwrite=overwrite)

    methods = {NAM_METHOD: nam, BLOB_METHOD: BlobSegmenter(name=BLOB_METHOD)}
    rows, _ = evaluate_cases(dataset.cases("test"), methods, slices="lungs", n_cases=len(test_entries),
                             progress=stage_callback(progress, "phantom: segmenting and evaluating the test split"),
                             on_output=save)
    summaries = {name: {k: v for k, v in row.items() if k not in ("detection_3d", "size_breakdown")}
                 for name, row in rows.items()}
    metrics = {
        "recipe": plan.to_dict(),
        "data": {"source": "phantom", "n_cases": info.n_cases, "n_test_cases": len(test_entries),
                 "splits": info.split_counts, "seed": data.seed},
        "training": {"best_balanced_val_accuracy": trained.best_metric, "best_epoch": trained.best_epoch,
                     "epochs": trained.epochs_completed, "steps": trained.global_step,
                     "device": trained.device},
        "methods": rows,
    }
    table = markdown_table(summaries, TABLE_COLUMNS)
    figure = plot_size_breakdown({name: row["size_breakdown"] for name, row in rows.items()},
                                 out / "figures" / "size_breakdown.png", overwrite=overwrite)
    return PhantomPart(metrics, table, _report(table, metrics, figure.relative_to(out)))


def _report(table: str, metrics: dict[str, Any], figure: Path) -> str:
    data, training = metrics["data"], metrics["training"]
    detections = "\n".join(
        f"- {name}: {d['tp']} of {d['tp'] + d['fn']} nodules found, {d['fp']} false-positive components "
        f"({fmt(d['fp_per_case'])} per case), TP Dice 3D {fmt(d['tp_dice_3d'])}."
        for name, d in ((name, row["detection_3d"]) for name, row in metrics["methods"].items())
    )
    return f"""## Training from weak labels: built-in phantom data

Recipe `{metrics['recipe']['name']}`. Data: {data['n_cases']} procedural chest CT phantoms (seed
{data['seed']}) with real LIDC-IDRI nodule shapes inserted, split
{', '.join(f'{k} {v}' for k, v in data['splits'].items())}, built in `data/` (see `data/dataset.json`).

The NAM 1-GAP classifier was trained from slice labels only: {training['epochs']} epochs,
{training['steps']} steps on {training['device']}, best balanced validation accuracy
{fmt(training['best_balanced_val_accuracy'])} (epoch {training['best_epoch']}); checkpoints in
`checkpoints/nam-1gap/`. NAM/R-NAM coarse and fine masks (made with `best.pt`, the epoch
{training['best_epoch']} weights, and the slice threshold its validation chose) and the training-free
Hessian blob filter were evaluated on the {data['n_test_cases']} held-out test case(s); masks in `masks/`.

### The NAM paper's Table 1 metrics (slice level) and 3D overlap

{table}
TPR, FPR, FPR_nodule, Dice, TP Dice and TP DOA follow the NAM paper's slice-level rules on the
lung-bearing slices (`docs/metrics.md`); Dice 3D, MSD and HD95 are per case.

### 3D per-nodule detection

{detections}

![TP Dice and TP DOA versus nodule size]({figure.as_posix()})
"""
