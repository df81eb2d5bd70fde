"""Tests of wsnodule_core.reports: JSON, Markdown tables and the Fig. 3 plot."""

from __future__ import annotations

import json
import math
import sys

import numpy as np
import pytest

from wsnodule_core.errors import MetricInputError, OutputExistsError
from wsnodule_core.metrics import evaluate_slices, match_nodules_3d, size_breakdown, summarize_slices
from wsnodule_core.reports import (
    format_mean_sd,
    markdown_table,
    plot_size_breakdown,
    to_json,
    to_jsonable,
)


def _evaluation(shift: int):
    pred = np.zeros((3, 80, 80), bool)
    gt = np.zeros_like(pred)
    gt[0, 0:4, 0:4] = True
    gt[1, 0:10, 0:10] = True
    gt[2, 0:30, 0:30] = True
    pred[0, 0:4, 0:4] = True
    pred[1, 0:10, shift : 10 + shift] = True
    pred[2, 0:30, 0:28] = True
    return evaluate_slices(pred, gt, (1.0, 1.0), case_id=f"shift{shift}")


def test_to_json_round_trip_with_nan_inf_and_numpy(tmp_path):
    ev = _evaluation(2)
    results = {
        "summary": summarize_slices(ev),
        "records": ev,
        "values": np.array([1.5, np.nan, np.inf]),
        "count": np.int64(7),
        "flag": np.bool_(True),
        "empty": {"tpr": math.nan, "msd": -math.inf},
        3: (np.float32(0.25), None),
    }
    path = to_json(results, tmp_path / "sub" / "results.json")
    loaded = json.loads(path.read_text())
    assert loaded["values"] == [1.5, None, None]
    assert loaded["count"] == 7 and loaded["flag"] is True and loaded["3"] == [0.25, None]
    assert loaded["empty"] == {"tpr": None, "msd": None}
    summary = summarize_slices(ev)
    assert loaded["summary"]["tpr"] == pytest.approx(summary["tpr"])
    assert loaded["summary"]["n_gt_nodules"] == 3
    first = loaded["records"]["nodules"][0]
    assert first["case_id"] == "shift2" and first["detected"] is True and first["dice"] == 1.0
    assert loaded["records"]["slices"][0]["kind"] == "nodule"


def test_to_json_of_detection_keeps_counts(tmp_path):
    gt = np.zeros((6, 10, 10), bool)
    gt[1:4, 1:4, 1:4] = True
    pred = np.zeros_like(gt)
    pred[4:6, 7:9, 7:9] = True  # a false positive only: the nodule is missed
    det = match_nodules_3d(pred, gt, (2.0, 1.0, 1.0), case_id="c")
    loaded = json.loads(to_json(det, tmp_path / "det.json").read_text())
    assert (loaded["tp"], loaded["fn"], loaded["fp"], loaded["sensitivity"]) == (0, 1, 1, 0.0)
    nodule = loaded["nodules"][0]
    assert nodule["pred_id"] is None and nodule["msd_mm"] is None and nodule["gt_volume_mm3"] == 54.0
    empty = match_nodules_3d(np.zeros_like(gt), np.zeros_like(gt), (2.0, 1.0, 1.0))
    assert json.loads(json.dumps(to_jsonable(empty)))["sensitivity"] is None


def test_to_json_never_silently_overwrites(tmp_path):
    path = to_json({"a": 1}, tmp_path / "r.json")
    with pytest.raises(OutputExistsError, match="overwrite=True"):
        to_json({"a": 2}, path)
    assert json.loads(path.read_text()) == {"a": 1}
    to_json({"a": 2}, path, overwrite=True)
    assert json.loads(path.read_text()) == {"a": 2}


def test_to_jsonable_rejects_unknown_types():
    with pytest.raises(MetricInputError, match="object"):
        to_jsonable({"x": object()})


def test_format_mean_sd():
    assert format_mean_sd(0.456, 0.312) == "0.46 (±0.31)"
    assert format_mean_sd(57.64, 71.08, digits=1) == "57.6 (±71.1)"
    assert format_mean_sd(0.77) == "0.77" and format_mean_sd(0.77, math.nan) == "0.77"
    assert format_mean_sd(None) == "-" and format_mean_sd(math.nan, 0.1) == "-"


def test_markdown_table_like_table1():
    rows = {
        "1-GAP Coarse": {"tpr": 0.77, "fpr": 0.11, "fpr_nodule": 0.08, "dice": 0.46, "dice_sd": 0.31,
                         "tp_dice": 0.61, "tp_dice_sd": 0.20, "tp_doa_mm2": 57.6, "tp_doa_mm2_sd": 71.1},
        "2-GAP Fine": {"tpr": 0.75, "fpr": math.nan, "fpr_nodule": 0.11, "dice": 0.55, "dice_sd": 0.33},
    }
    text = markdown_table(rows, columns=("tpr", "fpr", "fpr_nodule", "dice", "tp_dice", "tp_doa_mm2"))
    lines = text.strip().splitlines()
    assert len(lines) == 4
    assert lines[0].startswith("| Method | TPR | FPR |") and "TP DOA (mm²)" in lines[0]
    assert all(line.count("|") == 8 for line in lines)
    assert lines[2] == "| 1-GAP Coarse | 0.77 | 0.11 | 0.08 | 0.46 (±0.31) | 0.61 (±0.20) | 57.6 (±71.1) |"
    assert lines[3] == "| 2-GAP Fine | 0.75 | - | 0.11 | 0.55 (±0.33) | - | - |"


def test_markdown_table_default_columns_and_digits():
    rows = {"U-net": {"dice_3d": 0.5, "msd_mm": 12.345, "hd95_mm": 30.0}}
    text = markdown_table(rows, digits={"dice_3d": 3})
    header, _, row = text.strip().splitlines()
    for title in ("TPR", "FPR", "Dice", "TP Dice", "Dice 3D", "MSD (mm)", "HD95 (mm)"):
        assert title in header
    assert row.endswith("| 0.500 | 12.3 | 30.0 |")
    with pytest.raises(MetricInputError):
        markdown_table({"a": {}}, columns=())


def _png_pixels(path):
    from matplotlib.image import imread

    return imread(str(path))


def test_plot_size_breakdown_writes_png(tmp_path):
    pyplot = sys.modules.get("matplotlib.pyplot")
    figures_before = pyplot.get_fignums() if pyplot else None
    breakdowns = {"1-GAP Fine": size_breakdown(_evaluation(2)), "U-net": size_breakdown(_evaluation(4))}
    path = plot_size_breakdown(breakdowns, tmp_path / "fig3.png")
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    pixels = _png_pixels(path)
    assert pixels.shape[0] > 200 and pixels.shape[1] > 600
    assert pixels[..., :3].std() > 0.05  # not a blank canvas
    if pyplot:
        assert pyplot.get_fignums() == figures_before  # no pyplot figure was created
    with pytest.raises(OutputExistsError):
        plot_size_breakdown(breakdowns, path)
    plot_size_breakdown(breakdowns, path, overwrite=True)


def test_plot_accepts_json_bins_and_checks_bins(tmp_path):
    bins = json.loads(json.dumps(to_jsonable(size_breakdown(_evaluation(2)))))
    assert bins[-1]["high_mm"] is None  # inf upper edge written as null
    path = plot_size_breakdown({"from json": bins}, tmp_path / "fig.svg", title=None)
    assert path.read_text().lstrip().startswith("<?xml")
    other = size_breakdown(_evaluation(2), bins_mm=(0, 10, math.inf))
    with pytest.raises(MetricInputError, match="same bins"):
        plot_size_breakdown({"a": bins, "b": other}, tmp_path / "bad.png")
    with pytest.raises(MetricInputError):
        plot_size_breakdown({}, tmp_path / "empty.png")
    assert not (tmp_path / "bad.png").exists()
