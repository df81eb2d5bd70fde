"""Tests of wsnodule_core.metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from wsnodule_core.errors import (
    DimensionError,
    GeometryMismatchError,
    InvalidSpacingError,
    MetricInputError,
)
from wsnodule_core.metrics import (
    DEFAULT_SIZE_BINS_MM,
    SliceEvaluation,
    dice_3d,
    equivalent_diameter_2d,
    equivalent_diameter_3d,
    evaluate_slices,
    evaluate_volume,
    hausdorff95_mm,
    match_nodules_3d,
    mean_surface_distance_mm,
    pool_slice_evaluations,
    size_breakdown,
    summarize_detections,
    summarize_slices,
    summarize_volumes,
)

# ----------------------------------------------------------------------------- slice level

SP = (0.5, 0.5)  # pixel area 0.25 mm^2; a 10x10 square is 25 mm^2, diameter 5.64 mm


def _stack(n: int, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    return np.zeros((n, size, size), bool), np.zeros((n, size, size), bool)


def _table1_stack() -> tuple[np.ndarray, np.ndarray]:
    """3 nodule slices (hit at Dice 0.5, miss, hit + FP blob) and 3 negatives (one with a FP)."""
    pred, gt = _stack(6)
    gt[0:3, 10:20, 10:20] = True
    pred[0, 10:20, 15:25] = True  # overlap 50 px: Dice 0.5, same area
    pred[2, 10:20, 10:18] = True  # 80 px inside: Dice 160/180, DOA 20 px = 5 mm^2
    pred[2, 40:42, 40:42] = True  # FP component on a nodule slice
    pred[3, 30:33, 30:33] = True  # FP on a slice without nodule
    return pred, gt


def test_table1_metrics_hand_computed():
    pred, gt = _table1_stack()
    ev = evaluate_slices(pred, gt, SP, case_id="c1")
    s = summarize_slices(ev)
    assert s["n_nodule_slices"] == 3 and s["n_no_nodule_slices"] == 3 and s["n_excluded_slices"] == 0
    assert s["n_gt_nodules"] == 3 and s["n_detected"] == 2
    assert s["n_fp_no_nodule_slices"] == 1 and s["n_fp_nodule_slices"] == 1
    assert s["tpr"] == pytest.approx(2 / 3)
    assert s["fpr"] == pytest.approx(1 / 3)
    assert s["fpr_nodule"] == pytest.approx(1 / 3)
    slice_dice = [0.5, 0.0, 160 / 184]  # slice 2: whole pred mask (84 px) against the 100 px GT
    assert s["dice"] == pytest.approx(np.mean(slice_dice))
    assert s["dice_sd"] == pytest.approx(np.std(slice_dice))
    assert s["tp_dice"] == pytest.approx(np.mean([0.5, 160 / 180]))
    assert s["tp_dice_sd"] == pytest.approx(np.std([0.5, 160 / 180]))
    assert s["tp_doa_mm2"] == pytest.approx(2.5)
    assert s["tp_doa_mm2_sd"] == pytest.approx(2.5)
    missed = [n for n in ev.nodules if not n.detected]
    assert len(missed) == 1 and missed[0].slice_index == 1 and missed[0].dice == 0.0
    assert all(n.case_id == "c1" and n.area_mm2 == pytest.approx(25.0) for n in ev.nodules)
    assert ev.slices[2].n_fp_components == 1 and ev.slices[3].n_fp_components == 1


def test_all_detected_perfect_prediction():
    _, gt = _table1_stack()
    s = summarize_slices(evaluate_slices(gt.copy(), gt, SP))
    assert s["tpr"] == 1.0 and s["fpr"] == 0.0 and s["fpr_nodule"] == 0.0
    assert s["dice"] == 1.0 and s["tp_dice"] == 1.0 and s["tp_doa_mm2"] == 0.0 and s["dice_sd"] == 0.0


def test_no_predictions_gives_zero_tpr_and_nan_tp_means():
    _, gt = _table1_stack()
    s = summarize_slices(evaluate_slices(np.zeros_like(gt), gt, SP))
    assert s["tpr"] == 0.0 and s["fpr"] == 0.0 and s["fpr_nodule"] == 0.0 and s["dice"] == 0.0
    assert math.isnan(s["tp_dice"]) and math.isnan(s["tp_doa_mm2"]) and math.isnan(s["tp_dice_sd"])


def test_empty_inputs_do_not_crash():
    pred, gt = _stack(3)
    s = summarize_slices(evaluate_slices(pred, gt, SP))
    assert math.isnan(s["tpr"]) and math.isnan(s["fpr_nodule"]) and math.isnan(s["dice"])
    assert s["fpr"] == 0.0 and s["n_gt_nodules"] == 0
    empty = np.zeros((0, 8, 8), bool)
    s0 = summarize_slices(evaluate_slices(empty, empty, SP))
    assert s0["n_slices"] == 0 and math.isnan(s0["fpr"]) and math.isnan(s0["tpr"])


def test_fp_on_negative_slice_only():
    pred, gt = _stack(4)
    pred[1, 5:8, 5:8] = True
    s = summarize_slices(evaluate_slices(pred, gt, SP))
    assert s["fpr"] == pytest.approx(0.25) and math.isnan(s["tpr"])


def test_two_gt_nodules_on_one_slice():
    pred, gt = _stack(1)
    gt[0, 5:15, 5:15] = True
    gt[0, 40:50, 40:50] = True
    pred[0, 5:15, 5:15] = True
    ev = evaluate_slices(pred, gt, SP)
    assert [n.detected for n in ev.nodules] == [True, False]
    s = summarize_slices(ev)
    assert s["tpr"] == 0.5 and s["fpr_nodule"] == 0.0
    assert s["dice"] == pytest.approx(2 * 100 / 300)  # slice Dice over both nodules
    # one predicted component spanning both: each nodule's Dice uses the whole component
    pred2, _ = _stack(1)
    pred2[0, 5:50, 5:50] = True
    ev2 = evaluate_slices(pred2, gt, SP)
    assert all(n.detected for n in ev2.nodules)
    assert ev2.nodules[0].dice == pytest.approx(2 * 100 / (100 + 45 * 45))
    assert ev2.nodules[0].doa_mm2 == pytest.approx((45 * 45 - 100) * 0.25)


def test_eight_connectivity_and_label_map():
    pred, gt = _stack(1)
    gt[0, 5:15, 5:15] = True
    gt[0, 15:25, 15:25] = True  # touches the first square at a corner only: one 8-connected nodule
    assert len(evaluate_slices(pred, gt, SP).nodules) == 1
    labels = np.zeros(gt.shape, np.int32)
    labels[0, 5:15, 5:15] = 3
    labels[0, 5:15, 15:25] = 7  # shares an edge with label 3 but is its own nodule
    pred[0, 5:15, 15:25] = True
    ev = evaluate_slices(pred, labels, SP)
    assert [(n.gt_label, n.detected) for n in ev.nodules] == [(3, False), (7, True)]
    assert ev.nodules[1].dice == 1.0
    mask255 = np.zeros(gt.shape, np.uint8)
    mask255[0, 5:15, 5:15] = 255
    mask255[0, 40:50, 40:50] = 255  # one value only: a binary mask, two components
    assert len(evaluate_slices(np.zeros_like(pred), mask255, SP).nodules) == 2


def test_min_gt_diameter_excludes_small_components():
    pred, gt = _stack(2)
    gt[0, 5:9, 5:9] = True  # 16 px * 0.25 = 4 mm^2 -> 2.26 mm < 3 mm: ignored, slice excluded
    gt[1, 20:30, 20:30] = True
    gt[1, 50:52, 50:52] = True  # small extra component on a nodule slice
    pred[1, 50:52, 50:52] = True  # touches only the ignored component: not a false positive
    ev = evaluate_slices(pred, gt, SP)
    assert [s.kind for s in ev.slices] == ["excluded", "nodule"]
    s = summarize_slices(ev)
    assert s["n_gt_nodules"] == 1 and s["fpr_nodule"] == 0.0 and s["tpr"] == 0.0
    s_all = summarize_slices(evaluate_slices(pred, gt, SP, min_gt_diameter_mm=0.0))
    assert s_all["n_gt_nodules"] == 3 and s_all["n_detected"] == 1


def test_min_dice_threshold():
    pred, gt = _table1_stack()
    ev = evaluate_slices(pred, gt, SP, min_dice=0.6)
    assert [n.detected for n in ev.nodules] == [False, False, True]
    assert ev.nodules[0].dice == pytest.approx(0.5)  # the Dice is kept, the detection is not


def test_anisotropic_pixel_spacing_areas():
    pred, gt = _stack(1)
    gt[0, 10:20, 10:30] = True  # 200 px * (0.7 * 1.2) = 168 mm^2
    pred[0, 10:20, 10:25] = True  # 150 px = 126 mm^2
    (n,) = evaluate_slices(pred, gt, (0.7, 1.2)).nodules
    assert n.area_mm2 == pytest.approx(168.0) and n.pred_area_mm2 == pytest.approx(126.0)
    assert n.doa_mm2 == pytest.approx(42.0)
    assert n.diameter_mm == pytest.approx(2 * math.sqrt(168.0 / math.pi))


def test_slice_labels_override_gt():
    pred, gt = _stack(2)
    gt[1, 10:20, 10:20] = True
    pred[1, 10:20, 10:20] = True
    s = summarize_slices(evaluate_slices(pred, gt, SP, slice_labels=[False, False]))
    assert s["n_no_nodule_slices"] == 2 and s["fpr"] == 0.5 and math.isnan(s["tpr"])
    with pytest.raises(MetricInputError, match="slice 0"):
        evaluate_slices(pred, gt, SP, slice_labels=[True, True])
    with pytest.raises(MetricInputError, match="one label per slice"):
        evaluate_slices(pred, gt, SP, slice_labels=[True])


def test_pooling_matches_one_stack():
    pred, gt = _table1_stack()
    pooled = pool_slice_evaluations(
        [
            evaluate_slices(pred[:2], gt[:2], SP, case_id="a"),
            evaluate_slices(pred[2:], gt[2:], SP, case_id="b"),
        ]
    )
    assert isinstance(pooled, SliceEvaluation) and len(pooled.slices) == 6
    whole = summarize_slices(evaluate_slices(pred, gt, SP))
    assert summarize_slices(pooled) == pytest.approx(whole, nan_ok=True)
    assert {n.case_id for n in pooled.nodules} == {"a", "b"}


def test_single_2d_slice_and_input_errors():
    gt = np.zeros((32, 32), bool)
    gt[5:15, 5:15] = True
    assert summarize_slices(evaluate_slices(gt, gt, SP))["tpr"] == 1.0
    with pytest.raises(GeometryMismatchError):
        evaluate_slices(gt, gt[:10], SP)
    with pytest.raises(InvalidSpacingError):
        evaluate_slices(gt, gt, (0.5, -1.0))
    with pytest.raises(DimensionError):
        evaluate_slices(gt[None, None], gt[None, None], SP)
    with pytest.raises(MetricInputError):
        evaluate_slices(gt, gt, SP, min_dice=1.5)


def test_size_breakdown_bins():
    pred, gt = _stack(3, 80)
    gt[0, 0:4, 0:4] = True  # 16 mm^2 at 1 mm spacing: d 4.51 -> [3, 5)
    gt[1, 0:10, 0:10] = True  # 100 mm^2: d 11.28 -> [10, 20)
    gt[2, 0:30, 0:30] = True  # 900 mm^2: d 33.85 -> [30, inf)
    pred[1, 0:10, 0:8] = True
    pred[2, 0:30, 0:30] = True
    bins = size_breakdown(evaluate_slices(pred, gt, (1.0, 1.0)))
    assert len(bins) == len(DEFAULT_SIZE_BINS_MM) - 1
    assert [b.n_nodules for b in bins] == [1, 0, 1, 0, 1]
    assert [b.label for b in bins] == ["3-5", "5-10", "10-20", "20-30", ">=30"]
    assert bins[0].tpr == 0.0 and math.isnan(bins[0].tp_dice) and math.isnan(bins[1].tpr)
    assert bins[2].tp_dice == pytest.approx(160 / 180) and bins[2].tp_doa_mm2 == pytest.approx(20.0)
    assert bins[4].tp_dice == 1.0 and bins[4].tp_dice_sd == 0.0
    custom = size_breakdown(evaluate_slices(pred, gt, (1.0, 1.0)).nodules, bins_mm=(0, 10, math.inf))
    assert [b.n_nodules for b in custom] == [1, 2]
    with pytest.raises(MetricInputError):
        size_breakdown(SliceEvaluation((), ()), bins_mm=(5, 3))


def test_equivalent_diameters():
    assert equivalent_diameter_2d(math.pi * 4) == pytest.approx(4.0)
    assert equivalent_diameter_3d(4 / 3 * math.pi * 27) == pytest.approx(6.0)


# ----------------------------------------------------------------------------- volumetric

ANISO = (2.5, 0.7, 0.9)


def _surface_brute_force(pred, gt, spacing):
    """Pooled symmetric MSD and HD95 straight from the definition (all pairs of surface voxels)."""

    def surface(m):
        return np.argwhere(m & ~ndi.binary_erosion(m, border_value=0)) * np.asarray(spacing)

    a, b = surface(pred), surface(gt)
    d = np.linalg.norm(a[:, None] - b[None], axis=-1)
    ab, ba = d.min(axis=1), d.min(axis=0)
    return np.concatenate([ab, ba]).mean(), max(np.percentile(ab, 95), np.percentile(ba, 95))


def test_dice_3d_hand_computed():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros_like(a)
    a[0:2] = True  # 32 voxels
    b[1:4] = True  # 48 voxels, overlap 16
    assert dice_3d(a, b) == pytest.approx(32 / 80)
    assert dice_3d(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert dice_3d(a, np.zeros_like(a)) == 0.0


def test_planes_offset_anisotropic():
    gt = np.zeros((10, 6, 7), bool)
    pred = np.zeros_like(gt)
    gt[2] = True
    pred[5] = True  # every surface voxel is 3 slices = 7.5 mm from the other plane
    assert mean_surface_distance_mm(pred, gt, ANISO) == pytest.approx(7.5)
    assert hausdorff95_mm(pred, gt, ANISO) == pytest.approx(7.5)
    gx = np.zeros((4, 6, 9), bool)
    px = np.zeros_like(gx)
    gx[:, :, 1] = True
    px[:, :, 3] = True  # 2 columns of 0.9 mm
    assert mean_surface_distance_mm(px, gx, ANISO) == pytest.approx(1.8)
    assert hausdorff95_mm(px, gx, ANISO) == pytest.approx(1.8)


def test_single_voxels_and_pooled_convention():
    a = np.zeros((6, 6, 6), bool)
    a[2, 2, 2] = True
    b = np.zeros_like(a)
    b[3, 3, 2] = True
    expected = math.hypot(2.5, 0.7)
    assert mean_surface_distance_mm(b, a, ANISO) == pytest.approx(expected)
    assert hausdorff95_mm(b, a, ANISO) == pytest.approx(expected)
    # pred = GT voxel + one voxel 2 slices away (5 mm): pred->gt distances {0, 5}, gt->pred {0}
    two = a.copy()
    two[4, 2, 2] = True
    assert mean_surface_distance_mm(two, a, ANISO) == pytest.approx(5.0 / 3)  # pooled mean
    assert hausdorff95_mm(two, a, ANISO) == pytest.approx(0.95 * 5.0)  # interpolated percentile
    assert hausdorff95_mm(a, two, ANISO) == pytest.approx(0.95 * 5.0)  # symmetric


def test_empty_mask_conventions():
    a = np.zeros((5, 5, 5), bool)
    b = a.copy()
    b[2, 2, 2] = True
    assert mean_surface_distance_mm(a, a, ANISO) == 0.0 and hausdorff95_mm(a, a, ANISO) == 0.0
    assert math.isinf(mean_surface_distance_mm(a, b, ANISO)) and math.isinf(hausdorff95_mm(b, a, ANISO))


def test_cubes_offset_match_definition():
    gt = np.zeros((12, 16, 16), bool)
    gt[3:8, 4:12, 4:12] = True
    pred = np.roll(gt, 2, axis=0)
    msd, hd = _surface_brute_force(pred, gt, ANISO)
    assert mean_surface_distance_mm(pred, gt, ANISO) == pytest.approx(msd, rel=1e-6)
    assert hausdorff95_mm(pred, gt, ANISO) == pytest.approx(hd, rel=1e-6)
    # the z faces move by 2 slices (5 mm); no surface voxel is farther than that
    assert hausdorff95_mm(pred, gt, ANISO) == pytest.approx(5.0)


def test_masks_touching_the_image_border():
    gt = np.ones((3, 5, 6), bool)  # fills the image: the border counts as background
    pred = gt.copy()
    pred[:, :, 4:] = False
    msd, hd = _surface_brute_force(pred, gt, ANISO)
    assert mean_surface_distance_mm(pred, gt, ANISO) == pytest.approx(msd, rel=1e-6)
    assert hausdorff95_mm(pred, gt, ANISO) == pytest.approx(hd, rel=1e-6)
    assert mean_surface_distance_mm(gt, gt, ANISO) == 0.0


def test_sphere_vs_shifted_sphere():
    z, y, x = np.mgrid[:20, :40, :40]
    spacing = (2.0, 1.0, 1.0)
    sphere = ((z - 10) * 2.0) ** 2 + (y - 20.0) ** 2 + (x - 20.0) ** 2 <= 12.0**2
    shifted = np.roll(sphere, 3, axis=2)
    msd, hd = _surface_brute_force(shifted, sphere, spacing)
    got_msd = mean_surface_distance_mm(shifted, sphere, spacing)
    got_hd = hausdorff95_mm(shifted, sphere, spacing)
    assert got_msd == pytest.approx(msd, rel=1e-6) and got_hd == pytest.approx(hd, rel=1e-6)
    assert 0 < got_msd < got_hd <= 3.0 + 1e-6  # no point moves more than the 3 mm shift
    assert dice_3d(shifted, sphere) < 1.0


def test_2d_distances_and_errors():
    a = np.zeros((8, 8), bool)
    a[2, 2] = True
    b = np.zeros_like(a)
    b[2, 5] = True
    assert mean_surface_distance_mm(a, b, (1.0, 0.5)) == pytest.approx(1.5)
    with pytest.raises(InvalidSpacingError):
        mean_surface_distance_mm(a, b, (1.0, 0.5, 1.0))
    with pytest.raises(GeometryMismatchError):
        hausdorff95_mm(a, b[:4], (1.0, 0.5))


def test_evaluate_and_summarize_volumes():
    gt = np.zeros((6, 6, 6), bool)
    gt[2:4, 2:4, 2:4] = True
    e1 = evaluate_volume(gt, gt, ANISO, case_id="x")
    e2 = evaluate_volume(np.zeros_like(gt), gt, ANISO)
    assert (e1.dice_3d, e1.msd_mm, e1.hd95_mm) == (1.0, 0.0, 0.0)
    assert e1.gt_volume_mm3 == pytest.approx(8 * 2.5 * 0.7 * 0.9) and e2.pred_volume_mm3 == 0.0
    s = summarize_volumes([e1, e2])
    assert s["dice_3d"] == 0.5 and s["dice_3d_sd"] == 0.5 and s["n_infinite_distance"] == 1
    assert s["msd_mm"] == 0.0 and s["n_cases"] == 2
    assert math.isnan(summarize_volumes([])["dice_3d"])


# ----------------------------------------------------------------------------- 3D detection

DET_SP = (2.0, 1.0, 1.0)


def test_detection_counts_and_matched_metrics():
    gt = np.zeros((20, 30, 30), bool)
    gt[2:6, 2:6, 2:6] = True  # nodule A, 64 voxels = 128 mm^3
    gt[12:16, 20:24, 20:24] = True  # nodule B, missed
    pred = np.zeros_like(gt)
    pred[2:6, 2:6, 3:7] = True  # overlaps A on 48 voxels
    pred[10:12, 2:4, 20:22] = True  # far false positive
    ev = match_nodules_3d(pred, gt, DET_SP, case_id="k")
    assert (ev.tp, ev.fn, ev.fp, ev.n_pred_components) == (1, 1, 1, 2)
    assert ev.sensitivity == 0.5
    a, b = ev.nodules
    assert a.detected and not b.detected
    assert a.dice_3d == pytest.approx(0.75) and a.iou == pytest.approx(0.6)
    assert a.gt_volume_mm3 == pytest.approx(128.0) and a.pred_volume_mm3 == pytest.approx(128.0)
    assert a.gt_diameter_mm == pytest.approx((6 * 128 / math.pi) ** (1 / 3))
    assert a.centroid_distance_mm == pytest.approx(1.0)
    comp_pred = np.zeros_like(gt)
    comp_pred[2:6, 2:6, 3:7] = True
    comp_gt = np.zeros_like(gt)
    comp_gt[2:6, 2:6, 2:6] = True
    assert a.msd_mm == pytest.approx(mean_surface_distance_mm(comp_pred, comp_gt, DET_SP))
    assert a.hd95_mm == pytest.approx(hausdorff95_mm(comp_pred, comp_gt, DET_SP))
    assert b.pred_id is None and b.dice_3d == 0.0 and math.isinf(b.msd_mm)


def test_detection_is_one_to_one():
    gt = np.zeros((10, 30, 30), bool)
    gt[2:6, 2:6, 2:6] = True
    gt[2:6, 2:6, 8:12] = True
    pred = np.zeros_like(gt)
    pred[2:6, 2:6, 3:10] = True  # one component over both nodules: IoU 3/8 with A, 2/9 with B
    ev = match_nodules_3d(pred, gt, DET_SP)
    assert (ev.tp, ev.fn, ev.fp) == (1, 1, 0)
    assert ev.nodules[0].detected and ev.nodules[0].iou == pytest.approx(48 / 128)
    pred2 = np.zeros_like(gt)
    pred2[2:6, 2:4, 2:6] = True
    pred2[2:6, 5:6, 2:6] = True  # two predictions inside one nodule (row 4 left empty)
    gt2 = np.zeros_like(gt)
    gt2[2:6, 2:6, 2:6] = True
    ev2 = match_nodules_3d(pred2, gt2, DET_SP)
    assert (ev2.tp, ev2.fn, ev2.fp) == (1, 0, 1)
    assert ev2.nodules[0].iou == pytest.approx(0.5)  # the larger component wins


def test_detection_rules_and_threshold():
    gt = np.zeros((12, 30, 30), bool)
    gt[1:11, 5:15, 5:15] = True  # 10x10x10 voxels at 1 mm: radius (6000/pi)^(1/3)/2 = 6.2 mm
    pred = np.zeros_like(gt)
    pred[1:11, 5:15, 13:23] = True  # overlap 2 columns (IoU 200/1800), centroid 8 mm away
    iso = (1.0, 1.0, 1.0)
    assert match_nodules_3d(pred, gt, iso).tp == 1
    assert match_nodules_3d(pred, gt, iso, min_iou=0.2).tp == 0
    assert match_nodules_3d(pred, gt, iso, rule="centroid", compute_distances=False).tp == 0
    near = np.zeros_like(gt)
    near[1:11, 5:15, 9:19] = True  # centroid 4 mm away: within the radius
    m = match_nodules_3d(near, gt, iso, rule="centroid", compute_distances=False)
    assert m.tp == 1 and math.isnan(m.nodules[0].msd_mm)
    with pytest.raises(MetricInputError):
        match_nodules_3d(pred, gt, iso, rule="nearest")  # type: ignore[arg-type]


def test_detection_label_map_and_empty_cases():
    labels = np.zeros((8, 12, 12), np.int16)
    labels[2:5, 2:5, 2:5] = 2
    labels[2:5, 2:5, 5:8] = 5  # touching nodules kept apart by their labels
    pred = labels == 5
    ev = match_nodules_3d(pred, labels, DET_SP)
    assert [(n.gt_id, n.detected) for n in ev.nodules] == [(2, False), (5, True)]
    assert ev.nodules[1].dice_3d == 1.0 and ev.nodules[1].msd_mm == 0.0
    assert len(match_nodules_3d(pred, (labels > 0).astype(np.uint8) * 255, DET_SP).nodules) == 1
    empty = match_nodules_3d(np.zeros_like(pred), np.zeros_like(pred), DET_SP)
    assert (empty.tp, empty.fn, empty.fp) == (0, 0, 0) and math.isnan(empty.sensitivity)
    only_fp = match_nodules_3d(pred, np.zeros_like(pred), DET_SP)
    assert only_fp.fp == 1
    s = summarize_detections([ev, empty, only_fp])
    assert (s["tp"], s["fn"], s["fp"], s["n_cases"]) == (1, 1, 1, 3)
    assert s["sensitivity"] == 0.5 and s["fp_per_case"] == pytest.approx(1 / 3)
    assert s["tp_dice_3d"] == 1.0 and s["tp_msd_mm"] == 0.0
    assert math.isnan(summarize_detections([])["sensitivity"])
    with pytest.raises(DimensionError):
        match_nodules_3d(pred[0], labels[0], DET_SP)
