"""evaluate_dataset with hand-checkable fake segmenters; row names and order; checkpoint loading."""

from __future__ import annotations

import hashlib
import json
import math

import numpy as np
import pytest

from wsnodule_core.data.builders import build_dataset
from wsnodule_core.data.dataset import load_dataset
from wsnodule_core.errors import (CheckpointError, InvalidDatasetError, ModelConfigError, OutputExistsError,
                                  SegmentationCancelled)
from wsnodule_core.evaluation import evaluate_dataset, load_segmenters, row_name
from wsnodule_core.segmentation import (FunctionSegmenter, NamSegmenter, UnetBaselineSegmenter,
                                        nam_config_for_checkpoint)
from wsnodule_core.io import read_volume


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("eval") / "ds"
    build_dataset(folder, source="phantom", n_cases=3, size="tiny", n_shapes=20, seed=0)
    return folder


@pytest.fixture(scope="module")
def cases(dataset):
    ds = load_dataset(dataset)
    return {e["case_id"]: ds.load_case(e) for e in ds.entries()}


def _key(volume) -> str:
    return hashlib.sha1(np.ascontiguousarray(volume.array).tobytes()).hexdigest()


def truth_segmenter(cases):
    """Returns each case's own ground truth (found by its image)."""
    by_image = {_key(c.image): c.mask for c in cases.values()}
    return FunctionSegmenter("Truth", lambda volume, lungs: {"mask": by_image[_key(volume)]})


@pytest.mark.slow
def test_ground_truth_gives_perfect_scores(dataset, cases, tmp_path):
    calls = []
    report = evaluate_dataset(dataset, {"Truth": truth_segmenter(cases)}, None, tmp_path / "out",
                              progress=lambda done, total: calls.append((done, total)), save_masks=True)
    row = report.rows["Truth"]
    assert (row["tpr"], row["fpr"], row["fpr_nodule"]) == (1.0, 0.0, 0.0)
    assert row["dice"] == row["tp_dice"] == row["dice_3d"] == 1.0
    assert row["tp_doa_mm2"] == row["msd_mm"] == row["hd95_mm"] == 0.0
    assert row["n_cases"] == 3 and row["detection_3d"]["fp"] == 0
    assert calls[-1] == (3, 3)
    for name in ("metrics.json", "report.md", "fig3_size.png"):
        assert (tmp_path / "out" / name).stat().st_size > 100
    saved = read_volume(tmp_path / "out" / "masks" / "Truth" / "phantom_000.nii.gz")
    assert saved.same_geometry(cases["phantom_000"].image)
    np.testing.assert_array_equal(saved.array, cases["phantom_000"].mask.array)
    with pytest.raises(OutputExistsError, match="overwrite"):
        evaluate_dataset(dataset, {"Truth": truth_segmenter(cases)}, None, tmp_path / "out")


@pytest.mark.slow
def test_empty_and_whole_lung_predictions(dataset, cases, tmp_path):
    def empty(volume, lungs):
        return {"mask": volume.with_array(np.zeros(volume.shape, np.uint8))}

    def whole_lung(volume, lungs):
        return {"mask": volume.with_array(lungs.astype(np.uint8))}

    methods = {"Empty": FunctionSegmenter("Empty", empty), "Lung": FunctionSegmenter("Lung", whole_lung)}
    lungs_only = evaluate_dataset(dataset, methods, None, tmp_path / "lungs").rows
    every = evaluate_dataset(dataset, methods, None, tmp_path / "all", slices="all").rows
    assert lungs_only["Empty"]["tpr"] == 0.0 and lungs_only["Empty"]["fpr"] == 0.0
    assert lungs_only["Empty"]["dice"] == 0.0 and math.isnan(lungs_only["Empty"]["tp_dice"])
    # hand count of the slices: lung-bearing ones, and the empty-GT slices with / without lung
    n_lung = n_all = neg = neg_lung = 0
    for case in cases.values():
        has_lung = case.lungs.reshape(case.lungs.shape[0], -1).any(axis=1)
        empty_gt = ~case.mask.array.reshape(case.mask.shape[0], -1).any(axis=1)
        n_lung, n_all = n_lung + has_lung.sum(), n_all + has_lung.size
        neg, neg_lung = neg + empty_gt.sum(), neg_lung + (empty_gt & has_lung).sum()
    assert lungs_only["Lung"]["n_slices"] == n_lung and every["Lung"]["n_slices"] == n_all
    assert lungs_only["Lung"]["fpr"] == 1.0  # every counted slice holds lung, so is predicted
    assert every["Lung"]["fpr"] == pytest.approx(neg_lung / neg)
    assert every["Lung"]["n_no_nodule_slices"] == neg
    assert list(lungs_only) == ["Empty", "Lung"]


def test_rows_follow_the_paper_order_and_cancel_stops(dataset, tmp_path):
    def two(volume, lungs):
        zeros = volume.with_array(np.zeros(volume.shape, np.uint8))
        return {"coarse": zeros, "fine": zeros}

    def one(volume, lungs):
        return {"mask": volume.with_array(np.zeros(volume.shape, np.uint8))}

    two, one = FunctionSegmenter("two", two), FunctionSegmenter("one", one)
    report = evaluate_dataset(dataset, {"1-GAP": two, "U-net": one, "2-GAP": two}, "test", tmp_path / "o")
    assert list(report.rows) == ["1-GAP Coarse", "2-GAP Coarse", "1-GAP Fine", "2-GAP Fine", "U-net"]
    metrics = json.loads((tmp_path / "o" / "metrics.json").read_text())
    assert metrics["data"]["case_ids"] == ["phantom_000"] and list(metrics["methods"]) == list(report.rows)
    assert "| 2-GAP Fine |" in (tmp_path / "o" / "report.md").read_text()
    assert row_name("3-GAP", "coarse") == "3-GAP Coarse" and row_name("U-net", "mask") == "U-net"
    with pytest.raises(SegmentationCancelled):
        evaluate_dataset(dataset, {"U-net": one}, "test", tmp_path / "c", cancel=lambda: True)
    assert not (tmp_path / "c" / "metrics.json").exists()


def test_bad_inputs_are_refused(dataset, tmp_path):
    with pytest.raises(InvalidDatasetError, match="no such data set folder"):
        evaluate_dataset(tmp_path / "missing", {"x": FunctionSegmenter("x", lambda v, l: {})}, "test", tmp_path / "o")
    with pytest.raises(InvalidDatasetError, match="'val'"):
        evaluate_dataset(dataset, {"x": FunctionSegmenter("x", lambda v, l: {})}, "val", tmp_path / "o")  # this set has no val case
    with pytest.raises(ModelConfigError, match="at least one method"):
        evaluate_dataset(dataset, {}, "test", tmp_path / "o")


def _save(path, kind, model_config, train_config=None, state=None):
    from wsnodule_core.training.checkpoint import save_checkpoint

    return save_checkpoint(path, {"kind": kind, "model_config": model_config,
                                  "train_config": train_config or {}, "model_state": state or {}})


def test_load_segmenters_combines_multi_gap_with_the_one_gap_model(tmp_path):
    from wsnodule_core.baselines.unet import UNetConfig, UNetSegmenter
    from wsnodule_core.nam.model import MultiGapClassifier, MultiGapConfig

    paths = {}
    for n in (1, 2):
        config = MultiGapConfig(n_gap=n, width="narrow", head_channels=8)
        paths[n] = _save(tmp_path / f"{n}.pt", "nam-multigap", config.to_dict(),
                         {"image_size": 64, "pixel_spacing_mm": 5.0}, MultiGapClassifier(config).state_dict())
    unet_config = UNetConfig.compact(input_size=64)
    paths["u"] = _save(tmp_path / "u.pt", "unet-baseline", unet_config.to_dict(), {},
                       UNetSegmenter(unet_config).state_dict())
    methods = load_segmenters([(None, paths[1]), (None, paths[2]), ("Baseline", paths["u"])])
    assert list(methods) == ["1-GAP", "2-GAP", "Baseline"]
    one, two = methods["1-GAP"], methods["2-GAP"]
    assert isinstance(one, NamSegmenter) and one.multi_gap_model is None
    assert two.model is one.model and two.multi_gap_model.config.n_gap == 2
    assert (one.config.input_size, one.config.crop_pixel_spacing_mm) == (64, 5.0)
    assert isinstance(methods["Baseline"], UnetBaselineSegmenter)
    alone = load_segmenters([(None, paths[1]), (None, paths[2])], combine=False)["2-GAP"]
    assert alone.multi_gap_model is None and alone.model.config.n_gap == 2
    with pytest.raises(ModelConfigError, match="NAME=CKPT"):
        load_segmenters([(None, paths[1]), (None, paths[1])])
    with pytest.raises(CheckpointError, match="'other'"):
        load_segmenters([(None, _save(tmp_path / "o.pt", "other", {}))])
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_segmenters([(None, tmp_path / "none.pt")])


def test_nam_config_follows_the_checkpoint():
    class Ckpt:
        train_config = {"image_size": 96, "pixel_spacing_mm": None}
        raw = {"probability_threshold": 0.37}

    config = nam_config_for_checkpoint(Ckpt(), top_k=2)
    assert (config.input_size, config.crop_pixel_spacing_mm, config.top_k) == (96, None, 2)
    assert config.probability_threshold == 0.37  # the threshold its validation chose, as in the plugin
    assert nam_config_for_checkpoint(Ckpt(), probability_threshold=0.6).probability_threshold == 0.6
    with pytest.raises(ModelConfigError, match="no option"):
        nam_config_for_checkpoint(Ckpt(), top_kk=2)


def test_a_tile_classifier_segments_in_tiles():
    class Tiles:
        train_config = {"image_size": 40, "pixel_spacing_mm": 0.75, "hard_tiles_from": "g1/best.pt"}
        raw = {"probability_threshold": 0.2}

    config = nam_config_for_checkpoint(Tiles())
    assert (config.tile_size, config.crop_pixel_spacing_mm) == (40, 0.75)
    assert config.input_size > 400 and config.tile_stride is None  # both lungs; half a tile
    assert nam_config_for_checkpoint(Tiles(), tile_stride=10, probability_threshold=0.5).tile_stride == 10
