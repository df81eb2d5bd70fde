"""The one resampler, pinned to the outputs of the five resamplers it replaced (tests/image/golden.npz,
recorded from the old code on the same inputs)."""

from pathlib import Path

import numpy as np
import pytest

from wsnodule_core.data.insertion import resample_shape
from wsnodule_core.data.lung.crop import crop_mask, lung_crop, uncrop_mask
from wsnodule_core.data.luna16 import extract_patch
from wsnodule_core.data.nodule_shape import NoduleShape
from wsnodule_core.errors import InvalidSpacingError, ModelConfigError
from wsnodule_core.image.resample import (Grid, resample_array, resample_index_map, resample_to_grid,
                                          resample_to_spacing, resampled_shape, spacing_grid)
from wsnodule_core.image.window import AIR_HU
from wsnodule_core.io.volume import Volume

GOLDEN = np.load(Path(__file__).with_name("golden.npz"))
C, S = np.cos(0.3), np.sin(0.3)
DIRECTION = np.array([[C, -S, 0], [S, C, 0], [0, 0, 1.0]])


def _volume(name: str) -> Volume:
    return Volume(GOLDEN[name], (2.5, 0.7, 0.8), (-10.0, 5.0, 30.0), DIRECTION)


def _same(volume: Volume, name: str, *, atol: float = 0.0) -> None:
    expected = GOLDEN[name]
    assert volume.array.dtype == expected.dtype and volume.shape == expected.shape
    np.testing.assert_allclose(volume.array, expected, rtol=0, atol=atol)
    np.testing.assert_allclose(np.concatenate([volume.spacing, volume.origin, volume.direction.ravel()]),
                               GOLDEN[name + "_geom"], rtol=0, atol=1e-9)


def test_isotropic_grid_as_the_3d_nam_patches():  # was nam.patches3d.resample_isotropic
    ct, mask = _volume("ct"), _volume("mask")
    _same(resample_to_spacing(ct, 1.1, size="ceil", fill=AIR_HU), "iso_lin")
    _same(resample_to_spacing(mask, 1.1, size="ceil", interpolator="nearest"), "iso_near")
    same = Volume(GOLDEN["ct"], (1.0, 1.0, 1.0), (-10.0, 5.0, 30.0), DIRECTION)
    _same(resample_to_spacing(same, 1.0, size="ceil", fill=AIR_HU), "iso_same")


def test_explicit_grid():  # was nam.patches3d.resample_to_grid
    grid = Grid((5, 7, 6), (3.0, 1.3, 1.1), (-9.0, 6.0, 31.0), DIRECTION.T)
    _same(resample_to_grid(_volume("fl"), grid, fill=-3.0), "grid_lin")
    _same(resample_to_grid(_volume("mask"), grid, interpolator="nearest"), "grid_near")


def test_spacing_as_the_hybrid_cases():  # was data.hybrid.resample_to_spacing
    ct, mask, fl = _volume("ct"), _volume("mask"), _volume("fl")
    _same(resample_to_spacing(ct, (2.0, 1.0, 0.9), fill=AIR_HU, keep_dtype=True), "hyb_lin")
    _same(resample_to_spacing(mask, (2.0, 1.0, 0.9), interpolator="nearest"), "hyb_near")
    _same(resample_to_spacing(fl, (2.0, 1.0, 0.9), fill=-5.0, keep_dtype=True), "hyb_float")
    assert resample_to_spacing(ct, ct.spacing, keep_dtype=True) is ct


def test_array_form_as_pw4medseg():  # was pw4medseg.train.resample_array (scipy, edges repeated)
    ct, mask = GOLDEN["ct"], GOLDEN["mask"]
    lin = resample_array(ct, (2.5, 0.7, 0.8), (1.0, 1.0, 1.0))
    np.testing.assert_allclose(lin, GOLDEN["pw_lin"], rtol=0, atol=2e-3)
    near = resample_array(mask, (2.5, 0.7, 0.8), (1.0, 0.5, 1.0), interpolator="nearest")
    assert near.dtype == np.uint8 and np.array_equal(near, GOLDEN["pw_near"])
    back = resample_array(GOLDEN["pw_lin"], (1.0, 1.0, 1.0), (2.5, 0.7, 0.8), shape=ct.shape)
    np.testing.assert_allclose(back, GOLDEN["pw_back"], rtol=0, atol=2e-3)
    assert resampled_shape(ct.shape, (2.5, 0.7, 0.8), (1.0, 1.0, 1.0)) == lin.shape


def test_patch_around_a_world_point():  # data.luna16.extract_patch
    ct, mask = _volume("ct"), _volume("mask")
    centre = ct.index_to_world(np.array([4.2, 6.3, 5.1]))
    _same(extract_patch(ct, centre, size_vox=7, spacing=0.9, fill=-1024), "patch_lin")
    _same(extract_patch(mask, centre, size_vox=(5, 7, 6), spacing=(1.2, 0.9, 0.9), fill=0,
                        interpolator="nearest"), "patch_near")


def test_lung_crop_and_its_masks():  # data.lung.crop (linear crop, nearest _resample_plane)
    ct, mask = _volume("ct"), _volume("mask")
    lungs = np.zeros(ct.shape, bool)
    lungs[:, 3:11, 2:9] = True
    rng = np.random.default_rng(7)
    rng.integers(-1100, 500, ct.shape), rng.random(ct.shape), rng.normal(size=ct.shape)  # as when recorded
    for tag, size, spacing in (("", 10, 0.5), ("2", 8, 1.05)):
        crop = lung_crop(ct, lungs, size=size, pixel_spacing_mm=spacing)
        _same(crop.volume, f"crop{tag}_lin")
        cut = crop_mask(mask, crop)
        assert np.array_equal(cut, GOLDEN[f"crop{tag}_mask"])
        flipped = cut ^ (rng.random(cut.shape) > 0.7)
        assert np.array_equal(uncrop_mask(flipped, crop, ct), GOLDEN[f"uncrop{tag}_mask"])


def test_nodule_shape_through_a_rotation():  # data.insertion.resample_shape
    yy, xx, zz = np.meshgrid(np.arange(9), np.arange(11), np.arange(7), indexing="ij")
    ball = np.transpose(((zz - 3) ** 2 / 9 + (yy - 4.5) ** 2 / 16 + (xx - 5) ** 2 / 20) <= 1, (2, 0, 1))
    shape = NoduleShape(mask=ball, spacing=(1.25, 0.6, 0.65), diameter_mm=6.0,
                        volume_mm3=float(ball.sum()) * 1.25 * 0.6 * 0.65, texture_rating=5.0)
    for name, kw in {"shape_a": dict(angle_deg=30.0, flip_x=True), "shape_b": dict()}.items():
        r = resample_shape(shape, (1.5, 0.9, 0.8), min_voxels=1, **kw)
        np.testing.assert_allclose(r.fine, GOLDEN[name + "_fine"], rtol=0, atol=1e-5)
        assert np.array_equal(r.mask, GOLDEN[name + "_mask"])
        np.testing.assert_allclose(r.occupancy, GOLDEN[name + "_occ"], rtol=0, atol=1e-6)


def test_index_map_rounds_half_up_and_fills_outside():
    array = np.arange(4, dtype=np.int16)[None, None, :]
    out = resample_index_map(array, (1, 1, 6), (1.0, 1.0, 0.5), (0.0, 0.0, -2.0), fill=-7)
    assert out.tolist() == [[[-7, 0, 0, 1, 1, 2]]]
    boolean = resample_index_map(array > 1, (1, 1, 3), (1, 1, 1), (0, 0, 2))
    assert boolean.dtype == bool and boolean.tolist() == [[[True, True, False]]]


def test_grid_of_a_volume_and_bad_arguments():
    ct = _volume("ct")
    assert resample_to_grid(ct, ct, interpolator="nearest").array.tolist() == ct.array.tolist()
    grid = spacing_grid(ct, 1.25)
    assert grid.spacing == (1.25, 1.25, 1.25) and grid.shape == (18, 8, 8)
    with pytest.raises(InvalidSpacingError):
        resample_to_spacing(ct, (1.0, 0.0, 1.0))
    with pytest.raises(ModelConfigError):
        resample_to_grid(ct, ct, interpolator="cubic")  # type: ignore[arg-type]
    with pytest.raises(InvalidSpacingError):
        Grid((0, 2, 2), (1, 1, 1), (0, 0, 0), np.eye(3))


def test_model_grid_as_pw4medseg():  # was pw4medseg.train.model_grid (scipy), now through resample_to_spacing
    from wsnodule_core.pw4medseg.preprocess import model_grid

    _same(model_grid(_volume("fl"), (1.0, 1.0, 1.0)), "pw_grid", atol=1e-5)
