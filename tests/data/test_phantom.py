"""Tests of the procedural chest CT phantom (wsnodule_core.data.phantom)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from wsnodule_core.data.phantom import (
    LABEL_AIR,
    LABEL_AIRWAY,
    LABEL_BONE,
    LABEL_FAT,
    LABEL_HEART,
    LABEL_LUNG,
    LABEL_MUSCLE,
    LABEL_VESSEL,
    make_phantom,
    phantom_lung_mask,
    vessel_distance_mm,
)
from wsnodule_core.errors import DimensionError, InvalidSpacingError, PhantomParameterError, WsnoduleError

SMALL = ((32, 128, 128), (5.0, 2.7, 2.7))  # 160 x 345.6 x 345.6 mm
LARGE = ((64, 256, 256), (2.5, 1.35, 1.35))  # the same field of view, twice as fine


@pytest.fixture(scope="module")
def small():
    return make_phantom(*SMALL, seed=11)


@pytest.fixture(scope="module")
def large():
    return make_phantom(*LARGE, seed=11)


def litres(mask: np.ndarray, spacing) -> float:
    return float(mask.sum()) * float(np.prod(spacing)) / 1e6


# --- determinism and metadata -------------------------------------------------


def test_same_seed_gives_bitwise_identical_arrays(small):
    again = make_phantom(*SMALL, seed=11)
    assert again.volume.array.dtype == np.int16
    assert np.array_equal(again.volume.array, small.volume.array)
    for name in ("lungs", "left_lung", "right_lung", "vessels", "airways", "body", "labels"):
        assert np.array_equal(getattr(again, name), getattr(small, name)), name
    assert again.volume.metadata.series_uid == small.volume.metadata.series_uid


def test_different_seed_gives_a_different_chest(small):
    other = make_phantom(*SMALL, seed=12)
    assert not np.array_equal(other.vessels, small.vessels)
    assert np.mean(other.volume.array != small.volume.array) > 0.5  # noise differs almost everywhere
    assert other.volume.metadata.series_uid != small.volume.metadata.series_uid
    # the body and the lungs' outline do not depend on the seed
    assert np.array_equal(other.body, small.body)
    assert np.array_equal(other.lungs, small.lungs)


def test_volume_is_ct_with_scanner_like_geometry(small):
    vol = small.volume
    meta = vol.metadata
    assert meta.modality == "CT" and meta.source_format == "phantom"
    assert meta.series_uid.startswith("2.25.") and len(meta.series_uid) <= 64
    assert all(c.isdigit() or c == "." for c in meta.series_uid)
    assert vol.spacing == SMALL[1]
    assert np.allclose(vol.direction, np.eye(3))
    # origin: centre of the corner voxel, the field of view centred on x = y = 0 and on the mid-lung level
    fov_x, fov_y, fov_z = 128 * 2.7, 128 * 2.7, 32 * 5.0
    assert np.allclose(vol.origin, (-fov_x / 2 + 1.35, -fov_y / 2 + 1.35, -fov_z / 2 + 2.5))
    assert np.allclose(vol.index_to_world([15.5, 63.5, 63.5]), (0.0, 0.0, 0.0))


def test_float32_output_and_lung_mask_accessor():
    p = make_phantom((8, 64, 64), (5.0, 5.4, 5.4), seed=1, dtype="float32", noise_sd_hu=0.0)
    assert p.volume.array.dtype == np.float32
    assert phantom_lung_mask(p) is p.lungs
    assert p.lungs.dtype == bool and p.labels.dtype == np.uint8


@pytest.mark.parametrize(
    "kwargs, error",
    [
        (dict(shape=(32, 128), spacing=(1, 1, 1)), DimensionError),
        (dict(shape=(0, 16, 16), spacing=(1, 1, 1)), DimensionError),
        (dict(shape=(4, 16, 16), spacing=(1, 0, 1)), InvalidSpacingError),
        (dict(shape=(4, 16, 16), spacing=(1, 1, 1), kernel="bone"), PhantomParameterError),
        (dict(shape=(4, 16, 16), spacing=(1, 1, 1), noise_sd_hu=-1.0), PhantomParameterError),
        (dict(shape=(4, 16, 16), spacing=(1, 1, 1), slice_thickness_mm=0.0), PhantomParameterError),
        (dict(shape=(4, 16, 16), spacing=(1, 1, 1), dtype="uint8"), PhantomParameterError),
    ],
)
def test_bad_arguments_raise_clear_errors(kwargs, error):
    with pytest.raises(error) as info:
        make_phantom(seed=0, **kwargs)
    assert isinstance(info.value, WsnoduleError)
    assert "make_phantom" in str(info.value)


# --- anatomy ------------------------------------------------------------------


@pytest.mark.slow
def test_anatomy_scales_with_the_field_of_view(small, large):
    v_small = litres(small.lungs, SMALL[1])
    v_large = litres(large.lungs, LARGE[1])
    assert 3.0 < v_large < 7.0
    assert abs(v_small - v_large) / v_large < 0.05
    # the same chest: the fine masks block-averaged onto the coarse grid agree with the coarse masks
    coarse = large.lungs.reshape(32, 2, 128, 2, 128, 2).mean(axis=(1, 3, 5)) > 0.5
    assert np.mean(coarse == small.lungs) > 0.98
    body_small, body_large = litres(small.body, SMALL[1]), litres(large.body, LARGE[1])
    assert abs(body_small - body_large) / body_large < 0.02


def test_lungs_are_separate_and_on_the_correct_side(small):
    assert not np.any(small.left_lung & small.right_lung)
    assert np.array_equal(small.lungs, small.left_lung | small.right_lung)
    # not even touching: at least one voxel of mediastinum between them
    assert not np.any(ndimage.binary_dilation(small.left_lung) & small.right_lung)
    vol = small.volume
    left_x = vol.index_to_world(np.argwhere(small.left_lung).mean(0))[0]
    right_x = vol.index_to_world(np.argwhere(small.right_lung).mean(0))[0]
    assert left_x > 40.0 and right_x < -40.0  # LPS: patient left is +x
    ratio = small.left_lung.sum() / small.right_lung.sum()
    assert 0.7 < ratio < 1.1  # the heart takes room from the left lung
    assert np.all(small.body[small.lungs])


def test_tissue_medians_are_plausible_hounsfield_units(large):
    hu = large.volume.array
    labels = large.labels
    expected = {  # label: (low, high) for the median HU
        LABEL_AIR: (-1010, -990),
        LABEL_FAT: (-120, -80),
        LABEL_MUSCLE: (20, 70),
        LABEL_BONE: (200, 800),
        LABEL_HEART: (20, 60),
        LABEL_LUNG: (-900, -780),
        LABEL_VESSEL: (-350, 80),  # small vessels are partial-volumed with lung
    }
    for label, (low, high) in expected.items():
        median = float(np.median(hu[labels == label]))
        assert low <= median <= high, (label, median)
    assert float(np.median(hu[labels == LABEL_AIRWAY])) < -300  # air lumen with a thin wall
    # gravity: the dependent (posterior) lung is denser than the anterior lung
    parenchyma = labels == LABEL_LUNG
    rows = np.nonzero(parenchyma)[1]
    front = parenchyma & (np.arange(256)[None, :, None] < np.percentile(rows, 20))
    back = parenchyma & (np.arange(256)[None, :, None] > np.percentile(rows, 80))
    assert np.median(hu[back]) - np.median(hu[front]) > 20


def test_chest_contains_ribs_spine_and_sternum(small):
    bone = small.labels == LABEL_BONE
    vol = small.volume
    pts = vol.index_to_world(np.argwhere(bone).astype(float))
    assert np.any((np.abs(pts[:, 0]) < 20) & (pts[:, 1] > 60))  # spine behind
    assert np.any((np.abs(pts[:, 0]) < 20) & (pts[:, 1] < -90))  # sternum in front
    assert np.any(np.abs(pts[:, 0]) > 110)  # ribs on the flanks
    # ribs are separate bars, not a shell: a lateral column of the chest wall alternates bone / muscle
    column = bone[:, 64, 12:20].any(axis=1)
    assert 0.1 < column.mean() < 0.9


# --- vessels --------------------------------------------------------------------


def test_vessel_tree_tapers_by_murray_law(small):
    tree = small.vessel_tree
    r = tree.radius
    assert r.max() >= 6.0 and r.min() < 1.0
    small_count = np.sum(r < 1.0)
    mid_count = np.sum((r >= 1.0) & (r < 2.0))
    big_count = np.sum(r >= 3.0)
    assert small_count > mid_count > big_count > 0
    has_parent = tree.parent >= 0
    assert np.all(r[has_parent] <= r[tree.parent[has_parent]] + 1e-9)  # never widens downstream
    # at a bifurcation, parent^3 = sum of children^3
    parents, counts = np.unique(tree.parent[has_parent], return_counts=True)
    two = parents[counts == 2]
    child_cubes = np.bincount(tree.parent[has_parent], r[has_parent] ** 3, minlength=len(r))
    assert len(two) > 100
    assert np.allclose(child_cubes[two], r[two] ** 3, rtol=1e-6)
    # children start where their parent ends
    assert np.allclose(tree.start[has_parent], tree.end[tree.parent[has_parent]])


@pytest.mark.slow
def test_vessel_fraction_of_the_lungs_is_realistic(large):
    fraction = large.vessels.sum() / large.lungs.sum()
    assert 0.03 < fraction < 0.12
    assert np.all(large.lungs[large.vessels])
    # many vessels reach the lung periphery: the outer half of the lung (by depth) has vessel voxels
    depth = ndimage.distance_transform_edt(large.lungs, sampling=LARGE[1])
    outer = large.lungs & (depth < 15.0)
    assert large.vessels[outer].mean() > 0.005


def test_vessel_distance_is_zero_on_vessels_and_grows_away():
    p = make_phantom((16, 64, 64), (5.0, 5.4, 5.4), seed=2)
    dist = vessel_distance_mm(p)
    assert dist.shape == p.vessels.shape
    assert np.all(dist[p.vessels] == 0)
    near = ndimage.binary_dilation(p.vessels, np.ones((1, 1, 3), bool)) & ~p.vessels
    assert near.any()
    assert np.all(dist[near] <= 5.4 + 1e-4)
    assert np.all(dist[~p.vessels] > 0)


def test_airways_are_air_filled_tubes_inside_the_chest(small):
    assert small.airways.any()
    assert np.all(small.body[small.airways])
    # the trachea runs down the midline (world x = 0, y = +30) above the carina (z = +45)
    top = small.volume.world_to_index([0.0, 30.0, 75.0]).round().astype(int)
    assert small.airways[tuple(top)]
    assert small.labels[tuple(top)] == LABEL_AIRWAY
    assert small.volume.array[tuple(top)] < -700
    # bronchi enter both lungs
    assert (small.airways & small.left_lung).any() and (small.airways & small.right_lung).any()


# --- scanner effects ----------------------------------------------------------------


def _noise(kernel: str, sd: float = 20.0):
    shape, spacing = (12, 256, 256), (2.5, 1.35, 1.35)
    clean = make_phantom(shape, spacing, seed=4, noise_sd_hu=0.0, kernel=kernel, dtype="float32")
    noisy = make_phantom(shape, spacing, seed=4, noise_sd_hu=sd, kernel=kernel, dtype="float32")
    return clean, noisy


def _neighbour_correlation(field: np.ndarray) -> float:
    a, b = field[:, :, :-1].ravel(), field[:, :, 1:].ravel()
    return float(np.corrcoef(a, b)[0, 1])


@pytest.mark.slow
def test_noise_has_the_requested_sd_and_ct_texture():
    clean, noisy = _noise("soft")
    noise = noisy.volume.array - clean.volume.array
    assert abs(noise.std() - 20.0) < 1.0
    # in a uniform region (air outside the body, away from it) the image SD is the noise SD
    outside = ~ndimage.binary_dilation(noisy.body, iterations=5)
    assert abs(noisy.volume.array[outside].std() - 20.0) < 1.5
    assert abs(np.mean(noisy.volume.array[outside]) + 1000.0) < 1.0
    soft_corr = _neighbour_correlation(noise)
    assert soft_corr > 0.1
    clean_s, noisy_s = _noise("sharp")
    sharp = noisy_s.volume.array - clean_s.volume.array
    assert abs(sharp.std() - 20.0) < 1.0
    assert _neighbour_correlation(sharp) < soft_corr - 0.2


def test_thick_slices_lower_the_contrast_of_small_vessels():
    shape, spacing = (24, 128, 128), (2.5, 2.7, 2.7)
    thin = make_phantom(shape, spacing, seed=5, noise_sd_hu=0.0, dtype="float32")
    thick = make_phantom(shape, spacing, seed=5, noise_sd_hu=0.0, dtype="float32", slice_thickness_mm=7.5)
    tree = thin.vessel_tree
    pick = (tree.radius > 0.8) & (tree.radius < 1.5)
    idx = np.round(thin.volume.world_to_index(0.5 * (tree.start + tree.end)[pick])).astype(int)
    ok = np.all((idx >= 0) & (idx < shape), axis=1)
    idx = idx[ok]
    idx = idx[thin.lungs[tuple(idx.T)]]
    assert len(idx) > 50
    at = tuple(idx.T)
    contrast_thin = thin.volume.array[at] - np.median(thin.volume.array[thin.labels == LABEL_LUNG])
    contrast_thick = thick.volume.array[at] - np.median(thick.volume.array[thick.labels == LABEL_LUNG])
    assert np.mean(contrast_thick) < 0.8 * np.mean(contrast_thin)
    assert np.mean(contrast_thin) > 50.0


def test_noise_texture_is_fixed_in_millimetres():
    """The NPS is defined in cycles/mm: on finer pixels the soft-kernel noise is more correlated."""
    from wsnodule_core.data.phantom.noise import KERNELS, ct_noise
    from wsnodule_core.data.phantom.vessels import Grid

    rng = np.random.default_rng(0)
    fine = ct_noise(rng, Grid((4, 256, 256), (1.0, 0.7, 0.7), (0, 0, 0)), 30.0, KERNELS["soft"], 1.0)
    coarse = ct_noise(rng, Grid((4, 256, 256), (1.0, 1.4, 1.4), (0, 0, 0)), 30.0, KERNELS["soft"], 1.0)
    assert abs(fine.std() - 30.0) < 1.0 and abs(coarse.std() - 30.0) < 1.0
    assert _neighbour_correlation(fine) > 0.5
    assert _neighbour_correlation(fine) > _neighbour_correlation(coarse) + 0.2
    # slices thicker than their spacing share noise
    thick = ct_noise(rng, Grid((16, 64, 64), (1.0, 0.7, 0.7), (0, 0, 0)), 30.0, KERNELS["soft"], 3.0)
    assert abs(thick.std() - 30.0) < 2.0
    assert np.corrcoef(thick[:-1].ravel(), thick[1:].ravel())[0, 1] > 0.5
