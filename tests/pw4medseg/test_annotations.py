"""Sparse annotations: validation, and their simulation from ground-truth masks (points, boxes, slices)."""

import numpy as np
import pytest
from scipy.spatial.distance import pdist

from wsnodule_core.errors import WsnoduleError
from wsnodule_core.io.volume import Volume
from wsnodule_core.pw4medseg.annotations import (
    BoxAnnotation,
    PointAnnotation,
    SliceAnnotation,
    SparseAnnotationError,
    SparseAnnotations,
    combine,
    farthest_point_sampling,
    simulate_boxes,
    simulate_points,
    simulate_slices,
)


def sphere(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)], indexing="ij")
    return sum(g ** 2 for g in grids) <= radius ** 2


def two_spheres():
    mask = np.zeros((30, 40, 40), np.uint8)
    mask[sphere(mask.shape, (10, 12, 12), 5)] = 1
    mask[sphere(mask.shape, (20, 28, 26), 4)] = 1
    return mask


# --- points --------------------------------------------------------------------


def test_fps_points_are_spread_more_than_random_samples_and_inside_the_nodule():
    mask = sphere((24, 24, 24), (12, 12, 12), 9)
    ann = simulate_points(mask.astype(np.uint8), 20, seed=1)
    pts = ann.points[0].array()
    assert len(pts) == 20
    assert mask[tuple(pts.astype(int).T)].all()
    fps_min = pdist(pts).min()
    coords = np.argwhere(mask)
    rng = np.random.default_rng(0)
    random_mins = [pdist(coords[rng.choice(len(coords), 20, replace=False)]).min() for _ in range(20)]
    assert fps_min > max(random_mins)


def test_fps_uses_millimetre_distances():
    coords = np.array([[0, 0, 0], [2, 0, 0], [0, 0, 8]])
    # in voxels (0, 0, 8) is farthest from the start; in mm with 5 mm slices (2, 0, 0) is (10 mm vs 8 mm)
    assert farthest_point_sampling(coords, 2, spacing=(1, 1, 1), start=0)[1] == 2
    assert farthest_point_sampling(coords, 2, spacing=(5, 1, 1), start=0)[1] == 1


def test_points_per_nodule_inside_their_own_nodule_and_seeded():
    mask = two_spheres()
    from wsnodule_core.nodules import nodule_label_map

    ids, n = nodule_label_map(mask)
    ann = simulate_points(Volume(mask, (2.0, 1.0, 1.0)), 30, seed=3)
    assert n == 2 and len(ann.points) == 2
    for k, points in enumerate(ann.points, start=1):
        assert points.nodule == k
        assert (ids[tuple(points.array().astype(int).T)] == k).all()
        assert (points.label_array() == 1).all()
    again = simulate_points(Volume(mask, (2.0, 1.0, 1.0)), 30, seed=3)
    other = simulate_points(Volume(mask, (2.0, 1.0, 1.0)), 30, seed=4)
    assert again.points == ann.points
    assert other.points != ann.points


def test_more_points_than_voxels_gives_every_voxel_once_and_one_point_works():
    mask = np.zeros((5, 5, 5), np.uint8)
    mask[2, 2, 1:4] = 1
    ann = simulate_points(mask, 50, seed=0)
    pts = ann.points[0].array()
    assert len(pts) == 3 and len({tuple(p) for p in pts}) == 3
    assert len(simulate_points(mask, 1, seed=0).points[0].points) == 1
    with pytest.raises(SparseAnnotationError):
        simulate_points(mask, 0)


def test_points_grouped_by_label_value():
    mask = np.zeros((10, 20, 20), np.uint8)
    mask[2:4, 2:4, 2:4] = 1
    mask[6:8, 12:14, 12:14] = 1  # label 1 twice: one nodule by labels, two by components
    mask[6:8, 2:4, 2:4] = 2
    assert len(simulate_points(mask, 4).points) == 3
    assert len(simulate_points(mask, 4, by="labels").points) == 2


def test_background_points_lie_in_the_shell_outside_every_nodule():
    mask = two_spheres()
    ann = simulate_points(mask, 10, seed=0, n_background=5, background_shell_mm=(2.0, 6.0))
    from scipy import ndimage

    dist = ndimage.distance_transform_edt(mask == 0)
    for points in ann.points:
        bg = points.array()[points.label_array() == 0]
        assert len(bg) == 5
        d = dist[tuple(bg.astype(int).T)]
        assert (d >= 2.0).all() and (mask[tuple(bg.astype(int).T)] == 0).all()


# --- boxes ---------------------------------------------------------------------


def test_tight_boxes_are_the_bounding_boxes_and_loose_boxes_contain_them():
    mask = two_spheres()
    tight = simulate_boxes(mask).boxes
    assert tight[0].lo == (5, 7, 7) and tight[0].hi == (15, 17, 17)
    loose = simulate_boxes(mask, margin=2.0, jitter=1.0, seed=5).boxes
    for t, lo in zip(tight, loose):
        assert all(a <= b for a, b in zip(lo.lo, t.lo)) and all(a >= b for a, b in zip(lo.hi, t.hi))
        assert np.prod(lo.size) > np.prod(t.size)


def test_box_margin_in_mm_follows_the_spacing_and_is_clipped_to_the_grid():
    mask = np.zeros((10, 30, 30), np.uint8)
    mask[4:6, 1:5, 10:14] = 1
    box = simulate_boxes(Volume(mask, (5.0, 1.0, 1.0)), margin=5.0).boxes[0]
    assert box.lo == (3, 0, 5) and box.hi == (6, 9, 18)  # 1 slice in z, 5 voxels in y/x, y clipped at 0
    vox = simulate_boxes(Volume(mask, (5.0, 1.0, 1.0)), margin=1, margin_unit="voxels").boxes[0]
    assert vox.lo == (3, 0, 9) and vox.hi == (6, 5, 14)


def test_jitter_never_cuts_the_nodule():
    mask = two_spheres()
    tight = simulate_boxes(mask).boxes
    for seed in range(10):
        for t, b in zip(tight, simulate_boxes(mask, margin=0.5, jitter=3.0, seed=seed).boxes):
            assert all(a <= c for a, c in zip(b.lo, t.lo)) and all(a >= c for a, c in zip(b.hi, t.hi))


def test_planar_box_lies_on_the_largest_slice_and_holds_it():
    mask = two_spheres()
    box = simulate_boxes(mask, planar=True, margin=1.0).boxes[0]
    assert box.planar and box.lo[0] == box.hi[0] == 10
    yx = np.argwhere(mask[10, :20, :20])
    assert (yx.min(axis=0) - 1 == box.lo[1:]).all() and (yx.max(axis=0) + 1 == box.hi[1:]).all()


# --- slices --------------------------------------------------------------------


def test_slices_all_every_kth_fraction_and_negatives():
    mask = two_spheres()
    nodule_slices = set(np.flatnonzero(mask.any(axis=(1, 2))))
    s = simulate_slices(mask).slices
    assert set(s.positive) == nodule_slices and s.negative == ()
    every = simulate_slices(mask, every=3).slices
    assert set(every.positive) == set(range(5, 16, 3)) | set(range(16, 25, 3))
    few = simulate_slices(mask, fraction=0.3, seed=2).slices
    assert set(few.positive) < nodule_slices and len(few.positive) >= 2
    neg = simulate_slices(mask, n_negative=4, seed=1).slices
    assert len(neg.negative) == 4 and not set(neg.negative) & nodule_slices
    allneg = simulate_slices(mask, n_negative=-1, negative_candidates=np.arange(30) < 10).slices
    assert set(allneg.negative) == {0, 1, 2, 3, 4}


# --- validation ------------------------------------------------------------------


def test_errors_name_the_bad_item_and_the_remedy():
    with pytest.raises(SparseAnnotationError, match=r"point 1 .*outside the volume grid"):
        SparseAnnotations((10, 10, 10), points=(PointAnnotation(((1, 1, 1), (1, 12, 1))),))
    with pytest.raises(SparseAnnotationError, match="lo <= hi"):
        BoxAnnotation((3, 5, 5), (3, 4, 6))
    with pytest.raises(SparseAnnotationError, match="clip it"):
        SparseAnnotations((10, 10, 10), boxes=(BoxAnnotation((0, 0, 0), (10, 3, 3)),))
    with pytest.raises(SparseAnnotationError, match="slice 12"):
        SparseAnnotations((10, 10, 10), slices=SliceAnnotation((12,), (True,)))
    with pytest.raises(SparseAnnotationError, match="one label per point"):
        PointAnnotation(((1, 1, 1), (2, 2, 2)), labels=(1,))
    with pytest.raises(SparseAnnotationError, match="marked as showing no nodule"):
        SparseAnnotations((10, 10, 10), points=(PointAnnotation(((4, 1, 1),)),),
                          slices=SliceAnnotation((4,), (False,)))
    with pytest.raises(SparseAnnotationError, match="both present and absent"):
        SliceAnnotation((2, 2), (True, False))
    with pytest.raises(SparseAnnotationError, match="one slice"):
        BoxAnnotation((2, 0, 0), (3, 2, 2), planar=True)
    assert issubclass(SparseAnnotationError, WsnoduleError)
    # a background point may lie on a negative slice
    SparseAnnotations((10, 10, 10), points=(PointAnnotation(((4, 1, 1),), labels=(0,)),),
                      slices=SliceAnnotation((4,), (False,)))


def test_combine_merges_and_checks_the_grid():
    mask = two_spheres()
    both = simulate_points(mask, 5) | simulate_boxes(mask) | simulate_slices(mask, n_negative=2)
    assert len(both.points) == 2 and len(both.boxes) == 2 and both.slices is not None
    assert len(both.slices.negative) == 2
    with pytest.raises(SparseAnnotationError, match="same volume"):
        combine(simulate_boxes(mask), SparseAnnotations((5, 5, 5)))
