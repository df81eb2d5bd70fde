"""The LIDC-IDRI annotation database: scans, nodule clusters, reader masks and their merging."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.data.lidc import (
    cluster_nodules,
    equivalent_diameter_mm,
    get_scan,
    list_scans,
    merge_reader_masks,
    reader_masks,
    scan_grid,
    select_nodules,
    volume_mm3,
)
from wsnodule_core.data.lidc.annotations import RATING_NAMES
from wsnodule_core.data.lidc.consensus import consensus_mask, staple_mask
from wsnodule_core.data.lidc.scan import AnnotationMask, common_frame
from wsnodule_core.errors import DataLookupError, GeometryMismatchError, LidcParameterError

LIDC_0001_UID = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"


def test_list_scans_describes_the_database(pylidc_module):
    scans = list_scans()
    assert len(scans) == 1018
    assert len({s.series_uid for s in scans}) == 1018
    first = list_scans(patient_ids=["LIDC-IDRI-0001"])
    assert len(first) == 1
    info = first[0]
    assert info.series_uid == LIDC_0001_UID
    assert (info.slice_thickness_mm, info.pixel_spacing_mm, info.n_annotations) == (2.5, 0.703125, 4)
    thin = list_scans(max_slice_thickness_mm=1.0)
    assert thin and all(s.slice_thickness_mm <= 1.0 for s in thin)
    pl = pylidc_module
    assert len(thin) == pl.query(pl.Scan).filter(pl.Scan.slice_thickness <= 1.0).count()
    busy = list_scans(min_annotations=20)
    assert all(len(get_scan(s.series_uid).annotations) >= 20 for s in busy[:3])


def test_get_scan_by_patient_or_series_and_its_errors(pylidc_module):
    assert get_scan("LIDC-IDRI-0001").series_instance_uid == LIDC_0001_UID
    assert get_scan(LIDC_0001_UID).patient_id == "LIDC-IDRI-0001"
    with pytest.raises(DataLookupError, match="neither a series UID nor a patient id"):
        get_scan("LIDC-IDRI-9999")
    with pytest.raises(DataLookupError, match="has 2 scans"):
        get_scan("LIDC-IDRI-0132")


@pytest.mark.parametrize("patient", ["LIDC-IDRI-0001", "LIDC-IDRI-0078"])
def test_clusters_equal_pylidcs(pylidc_module, patient):
    scan = get_scan(patient)
    expected = [[a.id for a in group] for group in scan.cluster_annotations(verbose=False)]
    nodules = cluster_nodules(scan)
    assert [list(n.annotation_ids) for n in nodules] == expected
    assert [n.index for n in nodules] == list(range(len(expected)))


def test_nodule_measures_are_reader_means(pylidc_module):
    (nodule,) = cluster_nodules("LIDC-IDRI-0001")
    anns = nodule.annotations
    assert nodule.n_readers == 4
    assert nodule.diameter_mm == pytest.approx(sum(a.diameter for a in anns) / 4)
    for name in RATING_NAMES:
        assert nodule.ratings[name] == pytest.approx(sum(getattr(a, name) for a in anns) / 4)
    assert nodule.texture_rating == nodule.ratings["texture"]
    row, col, k = np.mean([a.centroid for a in anns], axis=0)
    assert np.allclose(nodule.centroid_zyx, [k, row, col])
    assert select_nodules([nodule], min_readers=5) == []
    assert select_nodules([nodule], max_diameter_mm=nodule.diameter_mm - 0.1) == []
    assert select_nodules([nodule], min_diameter_mm=3, min_readers=4) == [nodule]


def test_reader_masks_are_zyx_on_the_database_grid(pylidc_module):
    scan = get_scan("LIDC-IDRI-0001")
    grid = scan_grid(scan)
    assert grid.shape == (133, 512, 512)
    assert grid.spacing == (2.5, 0.703125, 0.703125)
    ann = scan.annotations[0]
    (mask,) = reader_masks([ann])
    rows, cols, ks = ann.bbox()
    assert mask.offset == (ks.start, rows.start, cols.start)
    assert np.array_equal(mask.mask, np.transpose(ann.boolean_mask(), (2, 0, 1)))
    full = mask.in_grid(grid.shape)
    # every marked slice is a slice where this reader drew a contour (z from the database)
    marked = np.flatnonzero(full.any(axis=(1, 2)))
    assert set(np.round(grid.slice_zvals[marked], 3)) <= set(np.round(ann.contour_slice_zvals, 3))
    # the centre of the largest contour (stored as x, y in the LIDC XML) is inside: row = y, col = x
    contour = max(ann.contours, key=lambda c: len(c.coords.split("\n")))
    xy = np.array([[int(v) for v in line.split(",")] for line in contour.coords.split("\n")])
    x, y = np.round(xy.mean(axis=0)).astype(int)
    k = int(np.argmin(np.abs(grid.slice_zvals - contour.image_z_position)))
    assert full[k, y, x]
    assert full.sum() == mask.mask.sum()
    with pytest.raises(GeometryMismatchError, match="does not fit"):
        mask.in_grid((10, 512, 512))


def test_consensus_equals_pylidc_and_staple_merges(pylidc_module):
    from pylidc.utils import consensus

    (nodule,) = cluster_nodules("LIDC-IDRI-0001")
    masks = reader_masks(nodule)
    for level in (0.25, 0.5, 1.0):
        merged = merge_reader_masks(masks, "consensus", level)
        expected, bbox, _ = consensus(list(nodule.annotations), clevel=level)
        assert np.array_equal(merged.mask, np.transpose(expected, (2, 0, 1)))
        assert merged.offset == (bbox[2].start, bbox[0].start, bbox[1].start)
    staple = merge_reader_masks(masks, "staple", 0.5)
    union = merge_reader_masks(masks, "consensus", 0.25).mask
    everyone = merge_reader_masks(masks, "consensus", 1.0).mask
    assert staple.annotation_ids == nodule.annotation_ids
    assert not (staple.mask & ~union).any()  # nothing no reader drew
    assert staple.mask[everyone].all()  # everything all readers drew
    with pytest.raises(LidcParameterError, match="'consensus' or 'staple'"):
        merge_reader_masks(masks, "mean")


def test_merging_hand_made_masks():
    a = np.zeros((1, 3, 4), bool)
    a[0, 1, :3] = True
    b = np.zeros((1, 3, 4), bool)
    b[0, 1, 1:] = True
    masks = [AnnotationMask(1, a, (5, 10, 20)), AnnotationMask(2, b[:, :, 1:], (5, 10, 21))]
    stack, offset = common_frame(masks)
    assert offset == (5, 10, 20) and stack.shape == (2, 1, 3, 4)
    assert np.array_equal(stack[1], b)
    assert consensus_mask(stack, 1.0)[0, 1].tolist() == [False, True, True, False]
    assert consensus_mask(stack, 0.5)[0, 1].tolist() == [True, True, True, True]
    same = np.stack([a, a, a])
    assert np.array_equal(staple_mask(same), a)
    assert np.array_equal(staple_mask(same[:1]), a)
    # two readers agree, the third draws nothing: STAPLE follows the majority
    assert np.array_equal(staple_mask(np.stack([a, a, np.zeros_like(a)])), a)


def test_nodule_size(pylidc_module):
    from wsnodule_core.data.lidc import nodule_size

    (nodule,) = cluster_nodules("LIDC-IDRI-0001")
    size = nodule_size(nodule, "consensus", 0.5)
    merged = merge_reader_masks(reader_masks(nodule), "consensus", 0.5)
    assert size.volume_mm3 == pytest.approx(merged.mask.sum() * 2.5 * 0.703125**2)
    assert size.equivalent_diameter_mm == pytest.approx((6 * size.volume_mm3 / np.pi) ** (1 / 3))
    assert size.diameter_mm == nodule.diameter_mm
    assert size.reader_volumes_mm3 == pytest.approx([a.volume for a in nodule.annotations])
    # pylidc's contour-area volumes and the voxel count of the consensus agree roughly
    assert 0.7 < size.volume_mm3 / np.mean(size.reader_volumes_mm3) < 1.3
    # an irregular nodule: its greatest axial diameter exceeds the equivalent sphere's
    assert size.equivalent_diameter_mm < size.diameter_mm


def test_volume_and_equivalent_diameter():
    mask = np.ones((2, 3, 4), bool)
    assert volume_mm3(mask, (2.0, 0.5, 0.5)) == pytest.approx(24 * 0.5)
    assert equivalent_diameter_mm(4 / 3 * np.pi * 5.0**3) == pytest.approx(10.0)
