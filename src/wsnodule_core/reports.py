"""Metric results as files: JSON, Markdown tables like the NAM paper's Table 1, Fig. 3 plots.

Nothing here overwrites an existing file unless ``overwrite=True``. Plots use matplotlib's
Agg canvas on a :class:`matplotlib.figure.Figure`, never pyplot, so no global figure state
is created or leaked.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from wsnodule_core.errors import MetricInputError, OutputExistsError

#: Table 1 columns (slice level) followed by the volumetric ones.
DEFAULT_COLUMNS: tuple[str, ...] = (
    "tpr",
    "fpr",
    "fpr_nodule",
    "dice",
    "tp_dice",
    "tp_doa_mm2",
    "dice_3d",
    "msd_mm",
    "hd95_mm",
)

COLUMN_TITLES: dict[str, str] = {
    "tpr": "TPR",
    "fpr": "FPR",
    "fpr_nodule": "FPR<sub>nodule</sub>",
    "dice": "Dice",
    "tp_dice": "TP Dice",
    "tp_doa_mm2": "TP DOA (mm²)",
    "dice_3d": "Dice 3D",
    "msd_mm": "MSD (mm)",
    "hd95_mm": "HD95 (mm)",
    "sensitivity": "Sensitivity",
    "fp_per_case": "FP / case",
}

_ONE_DECIMAL = {"tp_doa_mm2", "msd_mm", "hd95_mm", "fp_per_case"}


# --------------------------------------------------------------------------- JSON


def to_jsonable(value: Any) -> Any:
    """Convert metric results to plain JSON types.

    Dataclasses become dicts, numpy scalars and arrays become Python numbers and lists,
    tuples become lists, paths become strings, mapping keys become strings, and every
    non-finite float (``nan``, ``inf``) becomes ``None`` (JSON ``null``).
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return [to_jsonable(v) for v in value.tolist()]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, str):
        return value
    raise MetricInputError(
        f"to_json cannot write a value of type {type(value).__name__} ({value!r}); pass numbers, "
        "strings, lists, dicts, numpy values or dataclasses."
    )


def _check_writable(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise OutputExistsError(
            f"{path} already exists; choose another path or pass overwrite=True to replace it."
        )


def to_json(results: Any, path: str | Path, *, overwrite: bool = False, indent: int = 2) -> Path:
    """Write ``results`` (see :func:`to_jsonable`) as JSON to ``path`` and return the path.

    Raises :class:`OutputExistsError` if ``path`` exists and ``overwrite`` is False. Parent
    folders are created.
    """
    path = Path(path)
    _check_writable(path, overwrite)
    text = json.dumps(to_jsonable(results), indent=indent, allow_nan=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w" if overwrite else "x", encoding="utf-8") as handle:
        handle.write(text + "\n")
    return path


# --------------------------------------------------------------------------- Markdown


def _finite(value: Any) -> float | None:
    if value is None or isinstance(value, (str, bool)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def format_mean_sd(mean: Any, sd: Any = None, digits: int = 2) -> str:
    """``"0.46 (±0.31)"``, or ``"0.46"`` without a finite SD, or ``"-"`` without a finite mean."""
    m = _finite(mean)
    if m is None:
        return "-"
    s = _finite(sd)
    return f"{m:.{digits}f}" if s is None else f"{m:.{digits}f} (±{s:.{digits}f})"


def markdown_table(
    rows: Mapping[str, Mapping[str, Any]],
    columns: Sequence[str] = DEFAULT_COLUMNS,
    *,
    digits: Mapping[str, int] | None = None,
    row_title: str = "Method",
) -> str:
    """A Markdown table with one row per method, formatted as the NAM paper's Table 1.

    ``rows`` maps a method name (e.g. ``"1-GAP Coarse"``) to a summary dict such as
    :func:`~wsnodule_core.metrics.summarize_slices` returns. A cell shows ``key`` as
    ``mean (±sd)`` when ``key + "_sd"`` is present and finite, else the mean alone; a missing
    or non-finite value shows ``-`` (the paper's mark for "not reported"). Rates and Dice
    get two decimals, millimetre values one; ``digits`` overrides per column.
    """
    if not columns:
        raise MetricInputError("markdown_table needs at least one column name, e.g. 'tpr'.")
    decimals = {c: (1 if c in _ONE_DECIMAL else 2) for c in columns}
    decimals.update(digits or {})
    header = [row_title] + [COLUMN_TITLES.get(c, c) for c in columns]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * len(columns)) + "|",
    ]
    for name, summary in rows.items():
        cells = [format_mean_sd(summary.get(c), summary.get(f"{c}_sd"), decimals[c]) for c in columns]
        lines.append("| " + " | ".join([str(name).replace("|", "\\|")] + cells) + " |")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- plots


def _or(value: float | None, default: float) -> float:
    return default if value is None else value


def _bin_field(size_bin: Any, name: str) -> Any:
    return size_bin[name] if isinstance(size_bin, Mapping) else getattr(size_bin, name)


def _bin_label(size_bin: Any) -> str:
    low = _finite(_bin_field(size_bin, "low_mm"))
    high = _finite(_bin_field(size_bin, "high_mm"))  # None for an open (inf / null) upper edge
    return f">={low:g}" if high is None else f"{low:g}-{high:g}"


def plot_size_breakdown(
    breakdowns: Mapping[str, Sequence[Any]],
    path: str | Path,
    *,
    overwrite: bool = False,
    title: str | None = "TP Dice and TP DOA versus nodule size",
    dpi: int = 120,
) -> Path:
    """Draw the NAM paper's Fig. 3: TP Dice and TP DOA (mean ± SD) per nodule-size bin.

    ``breakdowns`` maps a method name to its size bins, as
    :func:`~wsnodule_core.metrics.size_breakdown` returns them (or their JSON dicts); all
    methods must use the same bins. One line per method, slightly offset sideways so the
    error bars stay readable. Empty bins (``nan``) leave a gap. The format follows the
    extension of ``path`` (``.png``, ``.pdf``, ``.svg``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if not breakdowns:
        raise MetricInputError("plot_size_breakdown needs at least one method's size bins.")
    labels = None
    for method, bins in breakdowns.items():
        method_labels = [_bin_label(b) for b in bins]
        if labels is None:
            labels = method_labels
        elif method_labels != labels:
            raise MetricInputError(
                f"method {method!r} uses size bins {method_labels} but others use {labels}: compute "
                "every method's breakdown with the same bins."
            )
    if not labels:
        raise MetricInputError("plot_size_breakdown got methods without any size bin.")
    path = Path(path)
    _check_writable(path, overwrite)

    fig = Figure(figsize=(10, 4), dpi=dpi)
    FigureCanvasAgg(fig)
    ax_dice, ax_doa = fig.subplots(1, 2)
    x = np.arange(len(labels), dtype=float)
    n_methods = len(breakdowns)
    for m, (method, bins) in enumerate(breakdowns.items()):
        offset = (m - (n_methods - 1) / 2) * min(0.08, 0.6 / max(n_methods, 1))
        for ax, key in ((ax_dice, "tp_dice"), (ax_doa, "tp_doa_mm2")):
            mean = np.array([_or(_finite(_bin_field(b, key)), np.nan) for b in bins], dtype=float)
            sd = np.array([_or(_finite(_bin_field(b, f"{key}_sd")), 0.0) for b in bins], dtype=float)
            ax.errorbar(x + offset, mean, yerr=sd, marker="o", capsize=3, label=str(method))
    for ax, ylabel in ((ax_dice, "TP Dice"), (ax_doa, "TP DOA (mm²)")):
        ax.set_xticks(x)
        ax.set_xticklabels(labels)
        ax.set_xlabel("nodule size (equivalent diameter, mm)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
    ax_dice.set_ylim(0.0, 1.05)
    ax_doa.set_ylim(bottom=0.0)
    ax_dice.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb" if overwrite else "xb") as handle:
        fig.savefig(handle, format=path.suffix.lstrip(".").lower() or "png")
    return path
