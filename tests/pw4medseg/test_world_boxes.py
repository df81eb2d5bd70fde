"""World boxes as PW4MedSeg box annotations: the series' own grid exactly, a resampled grid on the same
world region, clipping, refusal outside the grid, planar slice boxes, and a pseudo-label from them."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from wsnodule_core.data.tumour_boxes import SeriesBoxes, SliceBox, WorldBox, index_box_to_world, tumour_boxes
from wsnodule_core.errors import BoxOutsideGridError, GeometryMismatchError
from wsnodule_core.image.resample import Grid, resample_to_spacing
from wsnodule_core.io.volume import Volume, VolumeMetadata
from wsnodule_core.pw4medseg.pseudo_labels import pseudo_label
from wsnodule_core.pw4medseg.world_boxes import boxes_on_grid, slice_boxes_on_series, world_box_on_grid

UIDS = tuple(f"1.2.3.{z}" for z in range(12))


@pytest.fixture
def series_volume() -> Volume:
    array = np.full((12, 40, 48), -850, np.int16)
    array[4:8, 10:20, 14:30] = 30                               # a "tumour"
    direction = np.diag([-1.0, 1.0, 1.0])                      # x runs against the column index
    meta = VolumeMetadata(modality="CT", series_uid="9.9", source_path="/series",
                          extra={"sop_instance_uids": UIDS})
    return Volume(array, (2.5, 0.7, 0.8), (30.0, -40.0, 120.0), direction, meta)


@pytest.fixture
def series(series_volume) -> SeriesBoxes:
    boxes = (SliceBox(UIDS[4], 4, (10, 14), (19, 29), "A"), SliceBox(UIDS[5], 5, (11, 15), (18, 28), "A"),
             SliceBox(UIDS[6], 6, (10, 14), (19, 27), "A"), SliceBox(UIDS[7], 7, (12, 16), (17, 25), "A"))
    return SeriesBoxes("S", "9.9", Path("/series"), series_volume.shape, boxes, tumour_boxes(series_volume, boxes))


def test_own_grid_gives_back_the_boxed_voxels(series_volume, series):
    (box,) = boxes_on_grid(series_volume, series.tumours).boxes
    assert (box.lo, box.hi, box.nodule, box.planar) == ((4, 10, 14), (7, 19, 29), 1, False)
    # a Grid works as the volume does
    assert boxes_on_grid(Grid.of(series_volume), series.tumours).boxes == (box,)


def test_resampled_grid_keeps_the_world_region(series_volume, series):
    (world,) = series.tumours
    for spacing in ((1.0, 1.0, 1.0), (5.0, 1.6, 0.5)):
        grid = resample_to_spacing(series_volume, spacing)
        (box,) = boxes_on_grid(grid, series.tumours).boxes
        covered = index_box_to_world(grid, box.lo, box.hi)
        step = np.asarray(grid.spacing[::-1])                  # x, y, z mm (axis-aligned directions)
        # rounded outward: the voxels cover the whole world box, and at most one voxel more per face
        assert np.all(np.asarray(covered.lo) <= np.asarray(world.lo) + 1e-6)
        assert np.all(np.asarray(covered.hi) >= np.asarray(world.hi) - 1e-6)
        assert np.all(np.asarray(world.lo) - covered.lo < step + 1e-6)
        assert np.all(np.asarray(covered.hi) - world.hi < step + 1e-6)
        # the tumour's voxels on the new grid lie in the box
        tumour = resample_to_spacing(series_volume.with_array(series_volume.array > -400), spacing,
                                     interpolator="nearest").array.astype(bool)
        inside = np.zeros(grid.shape, bool)
        inside[box.slices] = True
        assert tumour.any() and np.all(inside[tumour])


def test_clipped_to_the_grid_and_refused_outside_it(series_volume):
    far = WorldBox((-500.0, -500.0, -500.0), (-400.0, -400.0, -400.0))
    with pytest.raises(BoxOutsideGridError, match="outside the volume grid"):
        boxes_on_grid(series_volume, [far])
    edges = index_box_to_world(series_volume, (-5, -5, -5), (2, 3, 4))  # half outside on every axis
    box = world_box_on_grid(series_volume, edges)
    assert (box.lo, box.hi) == ((0, 0, 0), (2, 3, 4))
    thin = index_box_to_world(series_volume, (3, 5, 5), (3, 5, 5))
    thin = WorldBox(thin.centre, thin.centre)                # thinner than a voxel: the voxel it lies in
    assert world_box_on_grid(series_volume, thin).lo == (3, 5, 5)


def test_planar_slice_boxes_on_their_series(series_volume, series):
    found = slice_boxes_on_series(series_volume, series)
    assert [(b.lo, b.hi, b.planar, b.nodule) for b in found.boxes][:2] == [
        ((4, 10, 14), (4, 19, 29), True, 1), ((5, 11, 15), (5, 18, 28), True, 1)]
    with pytest.raises(GeometryMismatchError, match="boxes_on_grid"):
        slice_boxes_on_series(resample_to_spacing(series_volume, 1.0), series)


def test_pseudo_label_from_world_boxes(series_volume, series):
    label = pseudo_label(series_volume, boxes_on_grid(series_volume, series.tumours))
    assert label.probability[5:7, 12:18, 18:26].mean() > 0.5
    assert label.probability[:2].max() < 0.1


def test_real_tumour_box_on_a_resampled_ct():
    root = os.environ.get("WSNODULE_DATA")
    if not root or not (Path(root) / "lung-pet-ct-dx").is_dir():
        pytest.skip("WSNODULE_DATA is not set or has no lung-pet-ct-dx/: point it at the shared data folder")
    from wsnodule_core.data.tumour_boxes import read_tumour_boxes
    from wsnodule_core.io.readers import read_volume

    (series,) = read_tumour_boxes(subjects=["A0001"])
    ct = read_volume(series.folder)
    (own,) = boxes_on_grid(ct, series.tumours).boxes
    assert own.lo[0] == 41 and own.hi[0] == 51
    assert len(slice_boxes_on_series(ct, series).boxes) == 11
    coarse = resample_to_spacing(ct, 2.0)
    (box,) = boxes_on_grid(coarse, series.tumours).boxes
    centre = coarse.index_to_world((np.asarray(box.lo) + box.hi) / 2)
    np.testing.assert_allclose(centre, series.tumours[0].centre, atol=2.0)
    assert np.median(coarse.array[box.slices]) > -500             # mostly tumour, not lung
