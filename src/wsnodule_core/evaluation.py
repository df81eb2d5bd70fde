"""Evaluate segmentation methods on a data set split: the NAM paper's Table 1 and Fig. 3.

A method is a :class:`Segmenter`: any callable ``(volume, lungs) -> {output name: label Volume}``
(e.g. ``{"coarse": ..., "fine": ...}`` for NAM/R-NAM, ``{"mask": ...}`` for the U-Net). Each
output of each method is one row of the table: ``"<method> Coarse"``, ``"<method> Fine"``, or the
method's name alone for an output called ``"mask"``. New methods (flow guidance, PW4MedSeg) plug
in by being such a callable. :func:`evaluate_dataset` is the scripted API behind
``wsnodule evaluate``; :func:`load_segmenters` turns checkpoints into segmenters.

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
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from wsnodule_core import __version__
from wsnodule_core.errors import (InvalidDatasetError, ModelConfigError, OutputExistsError,
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

TABLE_COLUMNS = ("tpr", "fpr", "fpr_nodule", "dice", "tp_dice", "tp_doa_mm2", "dice_3d", "msd_mm", "hd95_mm")
SLICE_RULES = ("lungs", "all")
FILES = ("metrics.json", "report.md", "fig3_size.png")


class Segmenter(Protocol):
    """A segmentation method: ``(volume in HU, lung mask or None) -> {output name: label Volume}``."""

    def __call__(self, volume: Volume, lungs: np.ndarray | None) -> Mapping[str, Volume]: ...


@dataclass(frozen=True, eq=False)
class NamSegmenter:
    """NAM/R-NAM (:func:`~wsnodule_core.nam.pipeline.segment_volume`): outputs ``coarse`` and ``fine``.

    ``multi_gap_model`` set: the paper's multi-GAP segmentation (``model`` is the 1-GAP classifier
    that picks the nodule slices and screens, the multi-GAP NAM narrows the scope).
    """

    model: Any
    config: Any = None
    multi_gap_model: Any = None

    def __call__(self, volume: Volume, lungs: np.ndarray | None) -> dict[str, Volume]:
        from wsnodule_core.nam.pipeline import NamConfig, segment_volume

        result = segment_volume(self.model, volume, lungs=lungs, config=self.config or NamConfig(),
                                multi_gap_model=self.multi_gap_model)
        return {"coarse": result.coarse, "fine": result.fine}


@dataclass(frozen=True, eq=False)
class UNetVolumeSegmenter:
    """The U-Net baseline (:func:`~wsnodule_core.baselines.unet.segment_volume_unet`): output ``mask``."""

    model: Any
    threshold: float = 0.5

    def __call__(self, volume: Volume, lungs: np.ndarray | None) -> dict[str, Volume]:
        from wsnodule_core.baselines.unet import segment_volume_unet

        return {"mask": segment_volume_unet(self.model, volume, lungs, threshold=self.threshold).mask}


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


def nam_config_from_checkpoint(checkpoint, **overrides):
    """The :class:`NamConfig` whose network input matches a NAM checkpoint's training slices
    (crop side and pixel spacing), with ``overrides`` (e.g. ``top_k=2``)."""
    from wsnodule_core.nam.pipeline import NamConfig

    train = checkpoint.train_config
    values: dict[str, Any] = {}
    if train.get("image_size"):
        values["input_size"] = int(train["image_size"])
    if train.get("pixel_spacing_mm"):
        values["crop_pixel_spacing_mm"] = float(train["pixel_spacing_mm"])
    return NamConfig(**{**values, **overrides})


def load_segmenters(
    checkpoints: Sequence[tuple[str | None, str | os.PathLike]],
    *,
    device: str = "cpu",
    combine: bool = True,
    nam_overrides: Mapping[str, Any] | None = None,
) -> dict[str, Segmenter]:
    """Segmenters for checkpoints, named ``name`` or by their model (``"<n>-GAP"``, ``"U-net"``).

    The kind of each checkpoint decides: a NAM classifier (``nam-multigap``) gives a
    :class:`NamSegmenter`, a U-Net (``unet-baseline``) a :class:`UNetVolumeSegmenter`, a PW4MedSeg
    network (``pw4medseg``) a :class:`~wsnodule_core.pw4medseg.infer.PwSegmenter`; any other is
    refused. With ``combine`` and a 1-GAP checkpoint among them, every 2-/3-GAP
    checkpoint is run as the paper's multi-GAP segmentation with the (first) 1-GAP model;
    otherwise each NAM checkpoint segments alone.
    """
    from wsnodule_core.errors import CheckpointError
    from wsnodule_core.baselines.unet.train import KIND as UNET_KIND
    from wsnodule_core.nam.model import KIND as NAM_KIND
    from wsnodule_core.nam.model import load_classifier
    from wsnodule_core.training.checkpoint import load_checkpoint

    loaded: list[tuple[str, str, Any, Any]] = []  # name, kind, model, checkpoint
    for name, path in checkpoints:
        kind = load_checkpoint(path).kind
        if kind == NAM_KIND:
            model, checkpoint = load_classifier(path, device)
            default = f"{model.config.n_gap}-GAP"
        elif kind == UNET_KIND:
            from wsnodule_core.baselines.unet import load_unet

            model, checkpoint = load_unet(path, device)
            default = "U-net"
        elif kind == "pw4medseg":
            from wsnodule_core.pw4medseg.infer import PwSegmenter

            model, checkpoint = PwSegmenter(path, device=device), None
            default = f"PW4MedSeg ({model.config.annotation.describe()})"
        else:
            raise CheckpointError(f"{path}: holds a {kind or 'unknown'!r} model; `evaluate` runs NAM "
                                  "classifiers, U-Nets and PW4MedSeg networks (checkpoints written by "
                                  "`wsnodule train`).")
        loaded.append((name or default, kind, model, checkpoint))
    names = [n for n, *_ in loaded]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ModelConfigError(f"several checkpoints are called {duplicates}; name them with NAME=CKPT.")
    one_gap = next(((m, c) for _, k, m, c in loaded if k == NAM_KIND and m.config.n_gap == 1), None)
    out: dict[str, Segmenter] = {}
    for name, kind, model, checkpoint in loaded:
        if kind == UNET_KIND:
            out[name] = UNetVolumeSegmenter(model)
        elif kind == "pw4medseg":
            out[name] = model
        elif combine and one_gap is not None and model.config.n_gap > 1:
            config = nam_config_from_checkpoint(one_gap[1], **(nam_overrides or {}))
            out[name] = NamSegmenter(one_gap[0], config, multi_gap_model=model)
        else:
            out[name] = NamSegmenter(model, nam_config_from_checkpoint(checkpoint, **(nam_overrides or {})))
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
        for method, segment in methods.items():
            if cancel is not None and cancel():
                raise SegmentationCancelled("the evaluation was cancelled; no report was written.")
            outputs = segment(case.image, lungs)
            for output, mask in outputs.items():
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

    Writes ``out_dir/metrics.json`` (every row's metrics, size bins, 3D detection, per case),
    ``out_dir/report.md`` (the table in Markdown), ``out_dir/fig3_size.png`` (TP Dice and TP DOA
    versus nodule size) and, with ``save_masks``, ``out_dir/masks/<row>/<case>.nii.gz``.
    ``split`` None evaluates every case. Existing files are refused unless ``overwrite``.
    ``progress(done, total)`` counts (case, method) runs; ``cancel()`` is polled before each.
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
    "EvaluationReport", "NamSegmenter", "SLICE_RULES", "Segmenter", "TABLE_COLUMNS", "UNetVolumeSegmenter",
    "evaluate_cases", "evaluate_dataset", "load_segmenters", "nam_config_from_checkpoint", "row_name",
]
