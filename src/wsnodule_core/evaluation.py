"""Evaluate segmentation methods on a data set split: the NAM paper's Table 1 and Fig. 3.

A method is a :class:`~wsnodule_core.segmentation.Segmenter` (from
:func:`~wsnodule_core.segmentation.load_segmenter`, or any object with ``name``, ``kind`` and
``segment``). Each of its outputs is one row of the table: ``"<method> Coarse"``, ``"<method> Fine"``
for NAM/R-NAM, or the method's name alone for an output called ``"mask"``. The data set's lung mask
is given to every method (the method segments the lungs itself when the data set has none).
:func:`evaluate_dataset` is the scripted API behind ``wsnodule evaluate``; :func:`load_segmenters`
turns checkpoints into segmenters.

Which slices count for the slice-level metrics (the paper is silent beyond "slices with / without
nodule"): with ``slices="lungs"`` (default) every axial slice of the case that holds lung in the
data set's lung mask (all slices when the case has no lung mask), with ``slices="all"`` every
slice; of those, :func:`~wsnodule_core.metrics.evaluate_slices` classifies each as a nodule
slice (a GT nodule >= 3 mm), a no-nodule slice (empty GT) or excluded (only GT specks < 3 mm).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from wsnodule_core import __version__
from wsnodule_core.errors import (CheckpointError, InvalidDatasetError, ModelConfigError, OutputExistsError,
                                  SegmentationCancelled)
from wsnodule_core.io.volume import Volume, check_mask_matches
from wsnodule_core.metrics import (
    evaluate_slices,
    evaluate_volume,
    match_nodules_3d,
    pool_slice_evaluations,
    size_breakdown,
    summarize_detections,
    summarize_slices,
    summarize_volumes,
)
from wsnodule_core.segmentation.base import LUNGS_AUTO, Segmenter

TABLE_COLUMNS = ("tpr", "fpr", "fpr_nodule", "dice", "tp_dice", "tp_doa_mm2", "dice_3d", "msd_mm", "hd95_mm")
SLICE_RULES = ("lungs", "all")
FILES = ("metrics.json", "report.md", "fig3_size.png")


@dataclass(frozen=True, eq=False)
class EvaluationReport:
    """What :func:`evaluate_dataset` computed and wrote.

    ``rows`` maps a table row (e.g. ``"1-GAP Fine"``) to its summary (the keys of
    :data:`TABLE_COLUMNS`, their ``_sd`` and the counts); ``metrics`` is the metrics.json document.
    """

    out_dir: Path
    rows: dict[str, dict[str, Any]]
    metrics: dict[str, Any]
    table: str
    files: dict[str, Path] = field(default_factory=dict)


def row_name(method: str, output: str) -> str:
    """Table row of a method's output: ``"1-GAP", "fine" -> "1-GAP Fine"``; ``"mask"`` -> the method."""
    return method if output == "mask" else f"{method} {output.capitalize()}"


def load_segmenters(
    checkpoints: Sequence[tuple[str | None, str | os.PathLike]],
    *,
    device: str = "cpu",
    combine: bool = True,
    nam_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Segmenter]:
    """Segmenters for checkpoints (through :func:`~wsnodule_core.segmentation.load_segmenter`'s loaders),
    named ``name`` or by their model (``"<n>-GAP"``, ``"U-net"``, ``"PW4MedSeg (...)"``).

    With ``combine`` and a 1-GAP checkpoint among them, every 2-/3-GAP checkpoint is run as the
    paper's multi-GAP segmentation with the (first) 1-GAP model (and its settings); otherwise each
    NAM checkpoint segments alone. ``nam_overrides`` (e.g. ``{"top_k": 2}``) go to every NAM segmenter.
    """
    from wsnodule_core.segmentation.load import (method_kinds, checkpoint_kind, load_model_of_kind,
                                                 segmenter_for_model)
    from wsnodule_core.training.device import choose_device

    torch_device = choose_device(device).device
    kinds = method_kinds()
    nam_kind = kinds["nam"]
    loaded: list[tuple[str | None, str, Any, Any]] = []  # name, kind, model, checkpoint
    for name, path in checkpoints:
        kind = checkpoint_kind(path)
        if kind in (kinds["flow_prior"], kinds["flow_predictor"]):
            raise CheckpointError(f"{path}: holds a {kind!r} model; evaluate flow guidance with --predictor "
                                  "(and --flow-prior), not --checkpoint.")
        model, checkpoint = load_model_of_kind(path, kind, torch_device)
        loaded.append((name, kind, model, checkpoint))
    one_gap = next(((m, c) for _, k, m, c in loaded if k == nam_kind and m.config.n_gap == 1), None)
    out: dict[str, Segmenter] = {}
    for name, kind, model, checkpoint in loaded:
        options = dict(nam_overrides or {}) if kind == nam_kind else {}
        if kind == nam_kind and combine and one_gap is not None and model.config.n_gap > 1:
            segmenter = segmenter_for_model(kind, one_gap[0], one_gap[1], multi_gap_model=model,
                                            name=name or f"{model.config.n_gap}-GAP", **options)
        else:
            segmenter = segmenter_for_model(kind, model, checkpoint, name=name, **options)
        if segmenter.name in out:
            raise ModelConfigError(f"several checkpoints are called {segmenter.name!r}; name them with "
                                   "NAME=CKPT.")
        out[segmenter.name] = segmenter
    return out


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "method"


def _counted_slices(lungs: np.ndarray | None, n_slices: int, rule: str) -> np.ndarray:
    if rule == "lungs" and lungs is not None and lungs.any():
        return np.flatnonzero(lungs.reshape(n_slices, -1).any(axis=1))
    return np.arange(n_slices)


@dataclass
class _Row:
    slices: list = field(default_factory=list)
    volumes: list = field(default_factory=list)
    detections: list = field(default_factory=list)


def evaluate_cases(
    cases,
    methods: Mapping[str, Segmenter],
    *,
    slices: str = "lungs",
    n_cases: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    on_output: Callable[[str, Any, Volume], None] | None = None,
) -> tuple[dict[str, dict[str, Any]], dict[str, list[dict]]]:
    """Run every method on every case and compute each row's metrics (no files written).

    ``cases`` yields :class:`~wsnodule_core.data.cases.Case` objects; ``on_output(row, case,
    mask)`` sees each predicted mask (e.g. to save it). Returns ``(rows, per_case)``: per row
    its summary with ``detection_3d`` and ``size_breakdown``, and its per-case volume metrics.
    """
    if slices not in SLICE_RULES:
        raise ModelConfigError(f"slices must be one of {SLICE_RULES}, got {slices!r}.")
    if not methods:
        raise ModelConfigError("give at least one method (segmenter) to evaluate.")
    acc: dict[str, _Row] = {}
    total = (n_cases or 0) * len(methods)
    done = 0
    for case in cases:
        lungs = np.asarray(case.lungs, bool) if case.lungs is not None and np.any(case.lungs) else None
        gt = np.asarray(case.mask.array)
        chosen = _counted_slices(lungs, gt.shape[0], slices)
        for method, segmenter in methods.items():
            if cancel is not None and cancel():
                raise SegmentationCancelled("the evaluation was cancelled; no report was written.")
            result = segmenter.segment(case.image, lungs=LUNGS_AUTO if lungs is None else lungs,
                                       cancel=cancel)
            for output, mask in result.outputs.items():
                row = row_name(method, output)
                pred = check_mask_matches(mask, case.image) != 0
                record = acc.setdefault(row, _Row())
                record.slices.append(evaluate_slices(pred[chosen], gt[chosen], case.image.spacing[1:],
                                                     case_id=case.case_id))
                record.volumes.append(evaluate_volume(pred, gt > 0, case.image.spacing, case_id=case.case_id))
                record.detections.append(match_nodules_3d(pred, gt, case.image.spacing, case_id=case.case_id))
                if on_output is not None:
                    on_output(row, case, mask if isinstance(mask, Volume) else case.image.with_array(mask))
            done += 1
            if progress is not None:
                progress(done, max(total, done))
    order = _row_order(acc)
    rows, per_case = {}, {}
    for row in order:
        record = acc[row]
        pooled = pool_slice_evaluations(record.slices)
        rows[row] = {**summarize_slices(pooled), **summarize_volumes(record.volumes),
                     "detection_3d": summarize_detections(record.detections),
                     "size_breakdown": size_breakdown(pooled)}
        per_case[row] = [{**summarize_slices(s), "case_id": v.case_id, "dice_3d": v.dice_3d,
                          "msd_mm": v.msd_mm, "hd95_mm": v.hd95_mm}
                         for s, v in zip(record.slices, record.volumes)]
    return rows, per_case


def _row_order(acc: Mapping[str, Any]) -> list[str]:
    """The paper's order: every Coarse row, then every Fine row, then other outputs, then single masks."""
    def rank(row: str) -> int:
        suffix = row.rsplit(" ", 1)[-1] if " " in row else ""
        return {"Coarse": 0, "Fine": 1}.get(suffix, 2)

    names = list(acc)
    return sorted(names, key=lambda r: (rank(r), names.index(r)))


def evaluate_dataset(
    dataset_dir: str | os.PathLike,
    methods: Mapping[str, Segmenter],
    split: str | None = "test",
    out_dir: str | os.PathLike = "evaluation",
    progress: Callable[[int, int], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    *,
    slices: str = "lungs",
    save_masks: bool = False,
    overwrite: bool = False,
) -> EvaluationReport:
    """Segment every case of ``split`` with every method; write the paper's Table 1 and Fig. 3.

    Parameters
    ----------
    dataset_dir
        A data set folder (``dataset.json``, from :func:`~wsnodule_core.build_dataset` or ``wsnodule data``).
    methods
        ``{name: segmenter}``, e.g. from :func:`~wsnodule_core.load_segmenter` or :func:`load_segmenters`.
    split
        ``"train"``, ``"val"``, ``"test"`` or None for every case.
    out_dir
        Receives ``metrics.json`` (every row's metrics, size bins, 3D detection, per case),
        ``report.md`` (the table in Markdown), ``fig3_size.png`` (TP Dice and TP DOA versus nodule size)
        and, with ``save_masks``, ``masks/<row>/<case>.nii.gz``. Existing files are refused unless
        ``overwrite``.
    progress, cancel
        ``progress(done, total)`` counts (case, method) runs; ``cancel()`` is polled before each.
    slices
        ``"lungs"`` (default) or ``"all"``: which slices count in the slice-level metrics.

    Returns
    -------
    EvaluationReport
        The rows, the metrics document, the Markdown table and the files written.

    Examples
    --------
    >>> from wsnodule_core import evaluate_dataset, load_segmenter
    >>> report = evaluate_dataset("data/phantom", {"NAM": load_segmenter("runs/nam1")},
    ...                           "test", "evaluation")          # doctest: +SKIP
    >>> print(report.table)                                        # doctest: +SKIP
    """
    from wsnodule_core.data.dataset import load_dataset
    from wsnodule_core.io import write_mask
    from wsnodule_core.reports import markdown_table, plot_size_breakdown, to_json

    root = Path(dataset_dir)
    if not root.exists():
        raise InvalidDatasetError(f"{root}: no such data set folder; build one with `wsnodule data ...`.")
    dataset = load_dataset(root)
    entries = dataset.entries(split)
    if not entries:
        raise InvalidDatasetError(f"{root}: the data set has no {split!r} case to evaluate; choose another "
                                  "split (--split) or rebuild the data set.")
    out = Path(out_dir)
    existing = [out / name for name in (*FILES, "masks") if (out / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(f"{existing[0]} already exists; choose another output folder or pass "
                                "overwrite=True (--overwrite) to replace the evaluation's files.")

    def save(row: str, case, mask: Volume) -> None:
        path = out / "masks" / _slug(row) / f"{case.case_id}.nii.gz"
        write_mask(mask, case.image, path, overwrite=overwrite)

    rows, per_case = evaluate_cases(dataset.cases(split), methods, slices=slices, n_cases=len(entries),
                                    progress=progress, cancel=cancel, on_output=save if save_masks else None)
    metrics = {
        "wsnodule_version": __version__,
        "data": {"path": str(root), "name": dataset.name, "split": split, "n_cases": len(entries),
                 "case_ids": [e["case_id"] for e in entries]},
        "slices": slices,
        "methods": rows,
        "per_case": per_case,
    }
    table = markdown_table(rows, TABLE_COLUMNS)
    out.mkdir(parents=True, exist_ok=True)
    files = {"metrics": to_json(metrics, out / "metrics.json", overwrite=overwrite)}
    files["figure"] = plot_size_breakdown({r: v["size_breakdown"] for r, v in rows.items()},
                                          out / "fig3_size.png", overwrite=overwrite)
    files["report"] = _write_report(out / "report.md", table, metrics, overwrite)
    return EvaluationReport(out, rows, metrics, table, files)


def _write_report(path: Path, table: str, metrics: dict[str, Any], overwrite: bool) -> Path:
    data = metrics["data"]
    lines = [
        "# wsnodule evaluation",
        "",
        f"wsnodule {metrics['wsnodule_version']}. Data set `{data['name']}` ({data['path']}), split "
        f"`{data['split']}`: {data['n_cases']} case(s). Slice-level metrics on "
        + ("the lung-bearing axial slices." if metrics["slices"] == "lungs" else "every axial slice."),
        "",
        "## Table 1 (NAM paper): slice-level detection and segmentation, 3D overlap",
        "",
        table,
        "TPR, FPR, FPR_nodule, Dice, TP Dice and TP DOA follow the NAM paper's slice-level rules "
        "(`docs/metrics.md`); Dice 3D, MSD and HD95 are per case.",
        "",
        "## 3D per-nodule detection",
        "",
        "| Method | Nodules found | FP components per case |",
        "|---|---:|---:|",
    ]
    for row, summary in metrics["methods"].items():
        det = summary["detection_3d"]
        fp = det.get("fp_per_case")
        fp_text = "-" if fp is None or not np.isfinite(fp) else f"{fp:.2f}"
        lines.append(f"| {row} | {det['tp']} / {det['tp'] + det['fn']} | {fp_text} |")
    lines += ["", "## Fig. 3: TP Dice and TP DOA versus nodule size", "", "![Fig. 3](fig3_size.png)", ""]
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True to replace it.")
    path.write_text("\n".join(lines))
    return path


__all__ = [
    "EvaluationReport", "SLICE_RULES", "TABLE_COLUMNS", "evaluate_cases", "evaluate_dataset", "load_segmenters",
    "row_name",
]
