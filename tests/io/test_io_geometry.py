"""World <-> voxel: Volume's transforms agree with SimpleITK's on oblique and real geometry."""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from wsnodule_core.io import Volume, read_volume
from wsnodule_core.io.sitk_bridge import to_sitk


def _check_against_sitk(volume: Volume, image: sitk.Image, rng: np.random.Generator) -> None:
    size_xyz = np.asarray(image.GetSize(), float)
    for _ in range(20):
        index_xyz = rng.uniform(-2, size_xyz + 2)
        world = np.asarray(image.TransformContinuousIndexToPhysicalPoint(index_xyz.tolist()))
        np.testing.assert_allclose(volume.index_to_world(index_xyz[::-1]), world, atol=1e-6)
        back = np.asarray(image.TransformPhysicalPointToContinuousIndex(world.tolist()))
        np.testing.assert_allclose(volume.world_to_index(world), back[::-1], atol=1e-6)
        np.testing.assert_allclose(back, index_xyz, atol=1e-6)


def test_oblique_matches_simpleitk():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(3, 3)))
    volume = Volume(
        np.zeros((7, 9, 11), np.int16), spacing=(2.5, 0.6, 0.9), origin=(10.0, -40.0, 125.5), direction=q
    )
    _check_against_sitk(volume, to_sitk(volume), rng)
    # hand check: one step along array axis 0 (z) moves spacing[0] along direction column 2
    step = volume.index_to_world((1, 0, 0)) - volume.index_to_world((0, 0, 0))
    np.testing.assert_allclose(step, 2.5 * q[:, 2])


def test_oblique_dicom_series_matches_simpleitk_reader(make_series):
    a, b = 0.4, 0.1  # orthonormal row/column cosines, tilted about two axes
    iop = (np.cos(a), np.sin(a), 0.0, -np.sin(a) * np.cos(b), np.cos(a) * np.cos(b), -np.sin(b))
    folder = make_series(orientation=iop)
    volume = read_volume(folder)
    image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    _check_against_sitk(volume, image, np.random.default_rng(1))


def test_real_series_matches_simpleitk_reader(real_series_small):
    volume = read_volume(real_series_small)
    image = sitk.ReadImage(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(real_series_small)))
    _check_against_sitk(volume, image, np.random.default_rng(2))
    # voxel [k, 0, 0] lies on slice k's ImagePositionPatient
    import pydicom

    for k in (0, 30, 60):
        ipp = pydicom.dcmread(volume.metadata.dicom_files[k], stop_before_pixels=True).ImagePositionPatient
        np.testing.assert_allclose(volume.index_to_world((k, 0, 0)), [float(v) for v in ipp], atol=1e-6)
