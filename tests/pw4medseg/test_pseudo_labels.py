"""Pseudo-labels from sparse annotations: the Gaussian point sum, box and slice designs, combination."""

import tracemalloc
from dataclasses import replace

import numpy as np
import pytest

from wsnodule_core.data.cases import make_phantom_case
from wsnodule_core.data.nodule_shape import NoduleShape
from wsnodule_core.errors import GeometryMismatchError, ModelConfigError, SegmentationCancelled
from wsnodule_core.io.volume import Volume
from wsnodule_core.pw4medseg.annotations import (
    BoxAnnotation,
    PointAnnotation,
    SliceAnnotation,
    SparseAnnotations,
    simulate_boxes,
    simulate_points,
    simulate_slices,
)
from wsnodule_core.pw4medseg.pseudo_labels import (
    PseudoLabelConfig,
    _separable_sum,
    gaussian_point_sum,
    pseudo_label,
)

SPACING = (2.0, 1.0, 0.8)
FIXED = PseudoLabelConfig(point_delta_mode="fixed", point_delta_mm=3.0, point_window_sigmas=None)


def brute_force_sum(shape, points, spacing, delta):
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in shape], indexing="ij"), -1).reshape(-1, 1, 3)
    d2 = (((grid - np.asarray(points)[None]) * np.asarray(spacing)) ** 2).sum(-1)  # voxels x N
    return np.exp(-d2 / (2 * delta ** 2)).sum(1).reshape(shape)


def sphere(shape, centre, radius, spacing=(1.0, 1.0, 1.0)):
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing)], indexing="ij")
    return sum(g ** 2 for g in grids) <= radius ** 2


def ct_with_nodule(shape=(20, 48, 48), centre=(10, 24, 24), radius=6.0, spacing=(1.0, 1.0, 1.0)):
    """Lung (-850 HU) with a 0 HU sphere; the lung mask is everything."""
    image = np.full(shape, -850.0, np.float32)
    nodule = sphere(shape, centre, radius, spacing)
    image[nodule] = 0.0
    return Volume(image, spacing), nodule, np.ones(shape, bool)


def dice(p, gt):
    return 2 * float((p * gt).sum()) / (float(p.sum()) + float(gt.sum()))


# --- the point Gaussian sum -------------------------------------------------------


def test_gaussian_sum_equals_brute_force_and_the_window_is_close():
    rng = np.random.default_rng(0)
    shape = (9, 14, 12)
    pts = rng.uniform(0, 1, (7, 3)) * (np.array(shape) - 1)
    exact = gaussian_point_sum(shape, pts, SPACING, 2.5)
    np.testing.assert_allclose(exact, brute_force_sum(shape, pts, SPACING, 2.5), rtol=1e-5, atol=1e-6)
    windowed = gaussian_point_sum(shape, pts, SPACING, 1.0, window_sigmas=4.0)
    bound = len(pts) * np.exp(-4.0 ** 2 / 2)
    assert np.abs(windowed - brute_force_sum(shape, pts, SPACING, 1.0)).max() <= bound
    # slab-by-slab chunks give the same sum as one block
    region = tuple(slice(0, n) for n in shape)
    np.testing.assert_allclose(_separable_sum(pts, region, np.array(SPACING), 2.5, chunk_elements=1),
                               exact, rtol=1e-6)


def test_gaussian_sum_never_holds_points_times_voxels():
    shape, n = (40, 128, 128), 200
    pts = np.random.default_rng(1).uniform(10, 30, (n, 3))
    tracemalloc.start()
    out = gaussian_point_sum(shape, pts, (1.0, 1.0, 1.0), 10.0)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    naive = n * int(np.prod(shape)) * 8  # a float64 points x voxels array: 1 GB
    assert peak < 40e6 and peak < naive / 25
    assert out.max() > 0


def test_point_pseudo_label_is_the_min_max_normalised_gaussian_sum():
    shape = (8, 12, 10)
    pts = ((3, 4, 5), (4, 7, 5), (2.5, 6, 3))
    ann = SparseAnnotations(shape, points=(PointAnnotation(pts),))
    image = np.zeros(shape, np.float32)
    label = pseudo_label(image, ann, FIXED, spacing=SPACING)
    s = brute_force_sum(shape, pts, SPACING, 3.0)
    np.testing.assert_allclose(label.probability, (s - s.min()) / (s.max() - s.min()), atol=1e-5)
    windowed = pseudo_label(image, ann, replace(FIXED, point_window_sigmas=5.0), spacing=SPACING)
    np.testing.assert_allclose(windowed.probability, label.probability, atol=len(pts) * np.exp(-12.5) * 2)
    assert label.probability.dtype == np.float32 and label.confidence.dtype == np.float32


def test_points_cover_a_sphere_and_adaptive_delta_beats_the_papers_fixed_delta_on_a_small_nodule():
    image, nodule, lungs = ct_with_nodule(radius=4.0)
    ann = simulate_points(image.with_array(nodule.astype(np.uint8)), 200, seed=0)
    adaptive = pseudo_label(image, ann, PseudoLabelConfig(), lungs)
    fixed = pseudo_label(image, ann, PseudoLabelConfig(point_delta_mode="fixed"), lungs)
    assert dice(adaptive.mask(), nodule) > 0.8
    assert dice(adaptive.mask(), nodule) > dice(fixed.mask(), nodule) + 0.2
    normalised = pseudo_label(image, ann, PseudoLabelConfig(point_normalisation="points"), lungs)
    assert dice(normalised.mask(), nodule) > 0.8


# --- boxes ---------------------------------------------------------------------


def test_box_designs_uniform_ellipsoid_intensity():
    image, nodule, lungs = ct_with_nodule()
    box = BoxAnnotation((4, 16, 16), (16, 32, 32))
    ann = SparseAnnotations(image.shape, boxes=(box,))
    out = {d: pseudo_label(image, ann, PseudoLabelConfig(box_design=d), lungs).probability
           for d in ("uniform", "ellipsoid", "intensity")}
    inside = np.zeros(image.shape, bool)
    inside[box.slices] = True
    assert (out["uniform"][inside] == 1).all() and (out["uniform"][~inside] == 0).all()
    ell = out["ellipsoid"]
    assert ell[10, 24, 24] == pytest.approx(1.0)  # the box centre
    assert ell[10, 24, 32] == pytest.approx(2 ** -((8 / 8.5) ** 2), abs=1e-4)  # r = 8 / (17 / 2) on x
    assert ell[10, 24, 24] > ell[10, 24, 30] > ell[10, 24, 32] and (ell[~inside] == 0).all()
    assert (out["intensity"][~inside] == 0).all()
    scores = {d: dice(p, nodule) for d, p in out.items()}
    assert scores["intensity"] > 0.9 and scores["intensity"] > scores["ellipsoid"] > scores["uniform"]


def test_intensity_box_ignores_dense_structures_not_connected_to_the_nodule():
    image, nodule, lungs = ct_with_nodule()
    array = image.array.copy()
    array[4:17, 17, 30:33] = 50.0  # a separate dense bar in the box
    ann = SparseAnnotations(image.shape, boxes=(BoxAnnotation((4, 15, 15), (16, 33, 33)),))
    p = pseudo_label(image.with_array(array), ann, PseudoLabelConfig(), lungs).probability
    assert p[4:17, 17, 30:33].max() == 0 and p[nodule].mean() > 0.8


def test_planar_box_extends_along_z_with_lower_confidence_off_its_slice():
    image, nodule, lungs = ct_with_nodule()
    ann = simulate_boxes(image.with_array(nodule.astype(np.uint8)), planar=True)
    label = pseudo_label(image, ann, PseudoLabelConfig(), lungs)
    assert dice(label.mask(), nodule) > 0.8
    assert label.confidence[10, 24, 24] > label.confidence[8, 24, 24] > 0


# --- slices ---------------------------------------------------------------------


def test_density_slices_mark_dense_lung_voxels_of_positive_slices_only():
    image, nodule, lungs = ct_with_nodule()
    lungs = lungs.copy()
    lungs[:, :, :5] = False
    array = image.array.copy()
    array[:, :, :3] = 40.0  # dense tissue outside the lungs
    ann = SparseAnnotations(image.shape, slices=SliceAnnotation((9, 10, 11, 2), (True, True, True, False)))
    cfg = PseudoLabelConfig(slice_design="density", lung_margin_mm=0.0)
    label = pseudo_label(image.with_array(array), ann, cfg, lungs)
    p = label.probability
    assert p[10, 24, 24] == pytest.approx(0.5, abs=0.01)
    assert p[10][~lungs[10]].max() == 0 and p[:9].max() == 0 and p[12:].max() == 0
    assert (p[2] == 0).all() and (label.confidence[2] == 1).all()


def test_blob_slices_prefer_the_nodule_over_a_vessel():
    image, nodule, lungs = ct_with_nodule(shape=(20, 48, 48), radius=4.0)
    array = image.array.copy()
    array[:, 10:12, 8:10] = 30.0  # a vessel running through every slice
    ann = simulate_slices(image.with_array(nodule.astype(np.uint8)), n_negative=3, seed=0)
    label = pseudo_label(image.with_array(array), ann, PseudoLabelConfig(slice_design="blob"), lungs)
    p = label.probability
    assert p[nodule].mean() > 0.7
    assert p[8:13, 10:12, 8:10].max() < 0.5
    assert dice(label.mask(), nodule) > 0.6
    assert (p[list(ann.slices.negative)] == 0).all()


def test_slices_gaps_are_filled_and_covered_slices_add_nothing():
    image, nodule, lungs = ct_with_nodule()
    ann = SparseAnnotations(image.shape, slices=SliceAnnotation((8, 10, 12), (True, True, True)))
    cfg = PseudoLabelConfig(slice_design="density", slice_max_gap=1)
    p = pseudo_label(image, ann, cfg, lungs).probability
    assert p[9, 24, 24] > 0.4 and p[11, 24, 24] > 0.4
    boxed = SparseAnnotations(image.shape, boxes=(BoxAnnotation((8, 20, 20), (12, 28, 28)),),
                              slices=ann.slices)
    q = pseudo_label(image, boxed, PseudoLabelConfig(slice_design="density"), lungs).probability
    assert q[10, 24, 24] > 0.9  # the box's intensity prior, not the vaguer slice prior (0.5)


# --- combination and confidence ---------------------------------------------------


def test_negatives_zero_max_rule_and_confidence_decays_far_from_annotations():
    image, nodule, lungs = ct_with_nodule(shape=(20, 48, 120))
    a = BoxAnnotation((4, 16, 16), (16, 32, 32))
    b = BoxAnnotation((6, 18, 18), (14, 30, 30))
    cfg = PseudoLabelConfig(box_design="ellipsoid", reach_mm=2.0, far_confidence=0.1)
    both = pseudo_label(image, SparseAnnotations(image.shape, boxes=(a, b)), cfg, lungs).probability
    one = [pseudo_label(image, SparseAnnotations(image.shape, boxes=(x,)), cfg, lungs).probability
           for x in (a, b)]
    np.testing.assert_allclose(both, np.maximum(*one))
    bg = PointAnnotation(((10, 24, 24),), labels=(0,))
    ann = SparseAnnotations(image.shape, boxes=(a,), points=(bg,), slices=SliceAnnotation((5,), (False,)))
    label = pseudo_label(image, ann, cfg, lungs)
    assert (label.probability[5] == 0).all() and (label.confidence[5] == 1).all()
    assert label.probability[10, 24, 24] == 0 and label.probability[10, 24, 27] == 0
    # 10 mm from slice 5, 83 mm from the box: far
    assert label.confidence[15, 24, 115] == pytest.approx(0.1, abs=1e-3)
    assert label.confidence[6, 24, 115] > 0.5  # next to the negative slice
    assert label.confidence[10, 24, 34] > 0.5  # next to the box
    for m in (label.probability, label.confidence):
        assert m.min() >= 0 and m.max() <= 1


def test_phantom_case_tight_boxes_and_volumes_keep_the_geometry():
    rng = np.random.default_rng(0)
    sp = np.array([1.25, 0.7, 0.7])
    shapes = []
    for i in range(2):
        r = float(rng.uniform(6.0, 9.0))
        half = np.ceil(r / sp).astype(int) + 1
        grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, sp)], indexing="ij")
        mask = sum(g ** 2 for g in grids) <= r ** 2
        shapes.append(NoduleShape(mask, tuple(sp), 2 * r, float(mask.sum() * sp.prod()), 5.0, (i,), "p"))
    case = make_phantom_case("c", seed=2, shape=(24, 96, 96), spacing=(2.5, 2.5, 2.5), shapes=shapes,
                             placements=("isolated",))
    gt = case.mask.array > 0
    assert gt.any()
    ann = simulate_boxes(case.mask, margin=2.0)
    label = pseudo_label(case.image, ann, PseudoLabelConfig(), case.lungs)
    assert dice(label.mask(), gt) > 0.7
    prob, conf = label.volumes()
    assert prob.same_geometry(case.image) and conf.same_geometry(case.image)
    with pytest.raises(GeometryMismatchError):
        pseudo_label(case.image.array, ann, PseudoLabelConfig(), case.lungs).volumes()


def test_errors_progress_and_cancel():
    image, nodule, lungs = ct_with_nodule()
    ann = SparseAnnotations(image.shape, boxes=(BoxAnnotation((4, 16, 16), (16, 32, 32)),))
    with pytest.raises(GeometryMismatchError, match="annotate"):
        pseudo_label(np.zeros((5, 5, 5)), ann)
    with pytest.raises(ModelConfigError, match="box_design"):
        PseudoLabelConfig(box_design="round")
    with pytest.raises(ModelConfigError, match="far_confidence"):
        PseudoLabelConfig(far_confidence=2.0)
    calls = []
    pseudo_label(image, ann, PseudoLabelConfig(), lungs, progress=lambda d, t: calls.append((d, t)))
    assert calls[-1] == (2, 2)
    with pytest.raises(SegmentationCancelled):
        pseudo_label(image, ann, PseudoLabelConfig(), lungs, cancel=lambda: True)


def test_confident_rule_takes_the_more_confident_source():
    image, nodule, lungs = ct_with_nodule()
    points = PointAnnotation(((10, 24, 24), (10, 24, 27), (12, 22, 24)))
    box = BoxAnnotation((5, 17, 17), (15, 31, 31))
    cfg = PseudoLabelConfig(box_design="ellipsoid", point_delta_mode="fixed", point_delta_mm=3.0,
                            reach_mm=1e4)
    single = [pseudo_label(image, SparseAnnotations(image.shape, **kw), cfg, lungs)
              for kw in ({"points": (points,)}, {"boxes": (box,)})]
    (p1, c1), (p2, c2) = [(s.probability, s.confidence) for s in single]
    both = {rule: pseudo_label(image, SparseAnnotations(image.shape, points=(points,), boxes=(box,)),
                               replace(cfg, combine=rule), lungs) for rule in ("max", "confident")}
    np.testing.assert_allclose(both["max"].probability, np.maximum(p1, p2))
    sure = np.abs(c1 - c2) > 1e-3
    np.testing.assert_allclose(both["confident"].probability[sure], np.where(c1 >= c2, p1, p2)[sure])
    np.testing.assert_allclose(both["confident"].confidence, np.maximum(c1, c2), atol=1e-5)
    assert not np.allclose(both["max"].probability, both["confident"].probability)
