"""ClassifiedSegmenter on a small synthetic anisotropic CT with a non-zero origin: three spheres of
different HU and size in a lung-like background, an inner segmenter that finds all three, and a stub
predictor whose P(nodule) rises with the patch's central intensity (so each sphere's P is known)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import ndimage
from torch import nn

from wsnodule_core.errors import ModelConfigError, SegmentationCancelled
from wsnodule_core.flow.on_volume import cut_patch
from wsnodule_core.flow.patches import PatchConfig
from wsnodule_core.image.window import apply_window
from wsnodule_core.io.volume import Volume
from wsnodule_core.segmentation import BlobSegmenter, ClassifiedSegmenter, FunctionSegmenter, RefinedSegmenter
from wsnodule_core.segmentation.classified import PROBABILITY_MAP

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPACING = (2.0, 0.8, 0.7)
ORIGIN = (-60.0, 25.0, -140.0)
SHAPE = (16, 64, 72)
# (centre voxel z, y, x), radius mm, HU: bright and large, medium, faint and small
SPHERES = (((7, 20, 20), 6.0, 60.0), ((8, 44, 30), 5.0, -100.0), ((8, 30, 56), 4.0, -400.0))
PATCH = PatchConfig(size=16, spacing_mm=1.5)


def synthetic_ct() -> tuple[Volume, list[np.ndarray]]:
    """The CT and each sphere's mask; a smooth -850 HU lung texture (no blob of its own)."""
    grids = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SPACING)], indexing="ij")
    texture = ndimage.gaussian_filter(np.random.default_rng(3).normal(0, 1, SHAPE), (0, 2, 2))
    hu = -850.0 + 40.0 * texture / texture.std()
    masks = []
    for centre, radius, value in SPHERES:
        ball = sum((g - c * s) ** 2 for g, c, s in zip(grids, centre, SPACING)) <= radius ** 2
        hu[ball] = value
        masks.append(ball)
    return Volume(hu.astype(np.float32), SPACING, ORIGIN), masks


class CentreBrightness(nn.Module):
    """P(nodule) = sigmoid(20 (mean of the central 2^3 voxels - 0.4)); records every batch it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[np.ndarray] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(x[:, 0].numpy().copy())
        c = x.shape[-1] // 2
        return 20.0 * (x[:, 0, c - 1:c + 1, c - 1:c + 1, c - 1:c + 1].mean(dim=(1, 2, 3)) - 0.4)


def expected_p(hu: float) -> float:
    return float(torch.sigmoid(torch.tensor(20.0 * (apply_window(np.float32(hu), (-1000, 1000)) - 0.4))))


@pytest.fixture(scope="module")
def ct():
    return synthetic_ct()


def all_spheres(masks):
    return FunctionSegmenter("spheres", lambda volume, lungs: np.any(masks, axis=0))


def per_sphere(result) -> list:
    """The candidate of each sphere (the inner labels come in scan order, not in SPHERES' order)."""
    by_label = {c.label: c for c in result.details.candidates}
    inner = np.asarray(result.maps["candidates"].array)
    return [by_label[int(inner[tuple(index)])] for index, _, _ in SPHERES]


def world_centre(volume: Volume, index) -> np.ndarray:
    return volume.index_to_world(np.asarray(index, float))


def test_candidates_below_the_threshold_are_dropped_and_the_rest_relabelled_by_p(ct):
    volume, masks = ct
    predictor = CentreBrightness()
    result = ClassifiedSegmenter(all_spheres(masks), predictor, PATCH, threshold=0.5).segment(volume)
    labels = np.asarray(result.mask.array)
    assert result.mask.same_geometry(volume) and labels.dtype == np.int32
    assert np.all(labels[masks[0]] == 1) and np.all(labels[masks[1]] == 2)  # the brighter one first
    assert not labels[masks[2]].any() and set(np.unique(labels)) == {0, 1, 2}
    assert result.n_nodules == 2
    details = result.details
    spheres = per_sphere(result)
    assert [c.kept for c in spheres] == [expected_p(h) >= 0.5 for _, _, h in SPHERES] == [True, True, False]
    assert [c.new_label for c in spheres] == [1, 2, 0] and details.n_unscored == 0
    assert [c.new_label for c in details.kept] == [1, 2]
    assert spheres[0].probability > spheres[1].probability > 0.5 > spheres[2].probability
    everything = ClassifiedSegmenter(all_spheres(masks), predictor, PATCH, threshold=0.0).segment(volume)
    assert np.all(np.asarray(everything.mask.array)[masks[2]] == 3)
    nothing = ClassifiedSegmenter(all_spheres(masks), predictor, PATCH, threshold=1.0).segment(volume)
    assert not np.asarray(nothing.mask.array).any() and len(nothing.details.candidates) == 3


def test_the_probability_map_lies_on_the_ct_grid_with_each_candidates_p(ct):
    volume, masks = ct
    result = ClassifiedSegmenter(all_spheres(masks), CentreBrightness(), PATCH).segment(volume)
    chances = result.maps[PROBABILITY_MAP]
    assert chances.same_geometry(volume) and np.asarray(chances.array).dtype == np.float32
    for mask, (_, _, hu) in zip(masks, SPHERES):
        assert np.allclose(np.asarray(chances.array)[mask], expected_p(hu), atol=0.02)
    assert not np.asarray(chances.array)[~np.any(masks, axis=0)].any()
    assert result.maps["candidates"].same_geometry(volume)  # every inner candidate, kept or not
    assert np.count_nonzero(result.maps["candidates"].array) == np.count_nonzero(np.any(masks, axis=0))


def test_patches_are_cut_at_the_component_centres_in_world_mm(ct):
    volume, masks = ct
    predictor = CentreBrightness()
    result = ClassifiedSegmenter(all_spheres(masks), predictor, PATCH, batch_size=2).segment(volume)
    assert [len(batch) for batch in predictor.seen] == [2, 1]
    seen = np.concatenate(predictor.seen)
    for candidate, mask, (index, _, hu) in zip(per_sphere(result), masks, SPHERES):
        assert np.allclose(candidate.centre_xyz, world_centre(volume, index), atol=0.05)
        assert candidate.voxels == int(mask.sum())
        expected = apply_window(np.asarray(cut_patch(volume, candidate.centre_xyz, 16, 1.5).array), (-1000, 1000))
        assert any(np.allclose(patch, expected, atol=1e-5) for patch in seen)
        # the sphere is at the patch centre: its voxel there has the sphere's intensity
        assert any(abs(patch[8, 8, 8] - apply_window(np.float32(hu), (-1000, 1000))) < 1e-3 for patch in seen)


def test_max_candidates_scores_only_the_largest(ct):
    volume, masks = ct
    predictor = CentreBrightness()
    result = ClassifiedSegmenter(all_spheres(masks), predictor, PATCH, threshold=0.0,
                                 max_candidates=2).segment(volume)
    details = result.details
    assert details.ranked_by == "voxels" and details.n_unscored == 1
    assert sum(len(batch) for batch in predictor.seen) == 2
    smallest = per_sphere(result)[2]
    assert smallest.voxels == min(c.voxels for c in details.candidates)
    assert smallest.probability is None and not smallest.kept and smallest.new_label == 0
    assert not np.asarray(result.mask.array)[masks[2]].any() and result.n_nodules == 2


def test_cancel_raises_and_progress_counts_the_batches(ct):
    volume, masks = ct
    segmenter = ClassifiedSegmenter(all_spheres(masks), CentreBrightness(), PATCH, batch_size=1)
    with pytest.raises(SegmentationCancelled):
        segmenter.segment(volume, cancel=lambda: True)
    asked = []

    def cancel_second_batch() -> bool:
        asked.append(1)
        return len(asked) > 2  # once after the inner segmenter, then before each batch

    with pytest.raises(SegmentationCancelled, match="1 of 3"):
        segmenter.segment(volume, cancel=cancel_second_batch)
    steps = []
    segmenter.segment(volume, progress=lambda done, total: steps.append((done, total)))
    assert steps == [(1, 3), (2, 3), (3, 3)]


def test_settings_are_checked():
    inner = FunctionSegmenter("x", lambda volume, lungs: np.zeros(volume.shape, bool))
    for bad in ({"threshold": 1.5}, {"max_candidates": 0}, {"batch_size": 0}):
        with pytest.raises(ModelConfigError):
            ClassifiedSegmenter(inner, CentreBrightness(), PATCH, **bad)
    empty = ClassifiedSegmenter(inner, CentreBrightness(), PATCH).segment(synthetic_ct()[0])
    assert empty.n_nodules == 0 and empty.details.candidates == ()


def test_on_blob_candidates_the_ranking_is_the_blob_response(ct):
    volume, masks = ct
    lungs = np.ones(volume.shape, bool)
    result = ClassifiedSegmenter(BlobSegmenter(), CentreBrightness(), PATCH, max_candidates=2).segment(
        volume, lungs=lungs)
    assert result.details.ranked_by == "response" and "response" in result.maps
    found = np.asarray(result.details.inner.mask.array) > 0
    assert all((found & m).any() for m in masks[:2])  # the blob filter finds the two brighter spheres
    assert np.all(np.asarray(result.mask.array)[masks[0] & found] == 1)


@pytest.mark.slow
def test_the_composite_with_medsam_refine(lite_medsam, smooth_sphere_ct, tmp_path):
    """A too-large box on the sphere and a box of bare parenchyma -> the classifier drops the parenchyma
    -> LiteMedSAM redraws the sphere (as tests/foundation/test_refine.py, with the classifier between)."""
    from wsnodule_core.foundation import EmbeddingCache

    volume, sphere = smooth_sphere_ct()
    zs, ys, xs = np.nonzero(sphere)
    box = np.zeros(sphere.shape, bool)
    box[zs.min():zs.max() + 1, ys.min() - 3:ys.max() + 4, xs.min() - 3:xs.max() + 4] = True
    parenchyma = np.zeros(sphere.shape, bool)
    parenchyma[zs.min():zs.max() + 1, 2:10, 2:10] = True
    inner = FunctionSegmenter("boxes", lambda v, lungs: box | parenchyma)
    composite = RefinedSegmenter(ClassifiedSegmenter(inner, CentreBrightness(), PATCH), lite_medsam,
                                 (("margin_mm", 0.0), ("cache", EmbeddingCache(tmp_path))))
    assert composite.name == "boxes + patch classifier + MedSAM refine"
    result = composite.segment(volume, lungs=None)
    labels = np.asarray(result.mask.array)
    assert result.mask.same_geometry(volume) and not labels[parenchyma].any()
    dice = 2 * np.count_nonzero((labels > 0) & sphere) / (np.count_nonzero(labels) + sphere.sum())
    assert dice > 0.7 and PROBABILITY_MAP in result.maps
    assert [c.kept for c in result.details.details.candidates].count(True) == 1
