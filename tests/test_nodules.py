"""Per-nodule measurements: volume, diameters and slices against shapes of known size."""

from __future__ import annotations

import math

import numpy as np
import pytest

from wsnodule_core.errors import InvalidVolumeError
from wsnodule_core.io.volume import Volume
from wsnodule_core.nodules import (drop_small_components, longest_axial_diameter_mm, measure_nodules,
                                   nodule_label_map)

SPACING = (1.25, 0.6, 0.8)


def sphere(shape, centre_mm, radius_mm, spacing=SPACING):
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, spacing)), indexing="ij")
    return (z - centre_mm[0]) ** 2 + (y - centre_mm[1]) ** 2 + (x - centre_mm[2]) ** 2 <= radius_mm**2


def test_a_sphere_measures_its_volume_and_diameters():
    radius = 6.0
    mask = sphere((24, 48, 40), (15.0, 14.4, 16.0), radius).astype(np.uint8)
    volume = Volume(mask, spacing=SPACING, origin=(3.0, -4.0, 50.0))
    [nodule] = measure_nodules(volume)
    assert nodule.n_voxels == int(mask.sum())
    assert nodule.volume_mm3 == pytest.approx(mask.sum() * np.prod(SPACING))
    assert nodule.volume_mm3 == pytest.approx(4 / 3 * math.pi * radius**3, rel=0.03)
    assert nodule.equivalent_diameter_mm == pytest.approx(2 * radius, rel=0.01)
    # pixel centres on the widest slice span the sphere's diameter less at most one pixel diagonal
    assert 2 * radius - math.hypot(*SPACING[1:]) <= nodule.longest_axial_diameter_mm <= 2 * radius
    assert nodule.longest_axial_slice == 12  # z = 15 mm / 1.25 mm
    assert nodule.slice_range == (8, 16)  # |z - 15| <= 6 mm at 1.25 mm slices: 9.. 21 mm
    np.testing.assert_allclose(nodule.centroid_zyx, (12, 24, 20), atol=0.05)
    assert nodule.centre_slice == 12 and nodule.labels == (1,)


def test_longest_axial_diameter_is_exact_for_a_rectangle():
    plane = np.zeros((10, 20), bool)
    plane[3:6, 2:12] = True  # 3 rows x 10 columns
    assert longest_axial_diameter_mm(plane, (0.5, 0.8)) == pytest.approx(math.hypot(2 * 0.5, 9 * 0.8))
    single = np.zeros((4, 4), bool)
    single[1, 1] = True
    assert longest_axial_diameter_mm(single, (1.0, 1.0)) == 0.0
    big = np.zeros((200, 200), bool)
    big[10:190, 20:170] = True  # many boundary points: the convex hull path
    assert longest_axial_diameter_mm(big, (1.0, 1.0)) == pytest.approx(math.hypot(179, 149))


def test_components_and_label_values_group_nodules_differently():
    mask = np.zeros((10, 20, 20), np.int32)
    mask[6:8, 2:5, 2:5] = 3       # a nodule lower down, label 3
    mask[1:3, 10:14, 10:14] = 1   # first nodule by slice
    mask[1:3, 10:14, 14:16] = 2   # touches label 1: same component, other label value
    mask[5, 15:17, 2:4] = 3       # label 3 again, apart from the first piece
    spacing = (2.0, 1.0, 1.0)
    by_component = measure_nodules(mask, spacing)
    assert [n.slice_range for n in by_component] == [(1, 2), (5, 5), (6, 7)]
    assert [n.labels for n in by_component] == [(1, 2), (3,), (3,)]
    assert by_component[0].volume_mm3 == pytest.approx(2 * 4 * 6 * 2.0)
    by_label = measure_nodules(mask, spacing, by="labels")
    assert [n.labels for n in by_label] == [(1,), (2,), (3,)]
    assert by_label[2].slice_range == (5, 7) and by_label[2].n_voxels == 18 + 4
    relabelled, n = nodule_label_map(mask, by="components")
    assert n == 3 and relabelled.dtype == np.uint16
    assert set(np.unique(relabelled[mask == 3])) == {2, 3} and set(np.unique(relabelled[mask == 2])) == {1}
    relabelled, n = nodule_label_map(mask, by="labels")
    assert n == 3 and (relabelled[mask == 3] == 3).all() and (relabelled[mask == 2] == 2).all()


def test_empty_masks_and_bad_inputs():
    assert measure_nodules(np.zeros((3, 4, 4), np.uint8), (1, 1, 1)) == []
    assert nodule_label_map(np.zeros((3, 4, 4), bool))[1] == 0
    with pytest.raises(InvalidVolumeError, match="spacing"):
        measure_nodules(np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(InvalidVolumeError, match="integer labels"):
        measure_nodules(np.zeros((3, 4, 4), np.float32), (1, 1, 1))
    with pytest.raises(InvalidVolumeError, match="negative"):
        measure_nodules(-np.ones((3, 4, 4), np.int32), (1, 1, 1))
    with pytest.raises(InvalidVolumeError, match="3D"):
        measure_nodules(np.zeros((4, 4), np.uint8), (1, 1))
    with pytest.raises(InvalidVolumeError, match="grouped by"):
        measure_nodules(np.ones((2, 2, 2), np.uint8), (1, 1, 1), by="blobs")


def test_drop_small_components_keeps_what_reaches_the_diameter():
    shape = (24, 60, 60)
    big, small = sphere(shape, (15, 18, 18), 4.0), sphere(shape, (15, 24, 36), 1.2)  # 8 mm and 2.4 mm
    mask = big | small
    np.testing.assert_array_equal(drop_small_components(mask, SPACING, 3.0), big)
    np.testing.assert_array_equal(drop_small_components(mask, SPACING, 0.0), mask)
    assert not drop_small_components(mask, SPACING, 9.0).any()
    assert not drop_small_components(np.zeros(shape, bool), SPACING, 3.0).any()
