"""Lung segmentation and the lung-centred crop: a synthetic chest with known anatomy, the two real series."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from wsnodule_core.data.lung import CropResult, crop_mask, lung_crop, segment_lungs, uncrop_mask
from wsnodule_core.errors import GeometryMismatchError, LungSegmentationError
from wsnodule_core.io.volume import Volume

# --- a synthetic chest, described in world millimetres (LPS: +x is the patient's left) -------------

BODY_AXES = (150.0, 105.0)  # x, y semi-axes of the body ellipse
LUNG_CENTRE_X = 70.0
LUNG_AXES = (52.0, 70.0, 95.0)  # x, y, z semi-axes of each lung
LUNG_Y, LUNG_Z = 5.0, 110.0
CARINA_Z = 150.0
NODULE_RADIUS = 9.0
# Right lung (-x): lateral wall at x = -(70 + 52) = -122; the nodule touches it from inside.
NODULE_CENTRE = (-LUNG_CENTRE_X - LUNG_AXES[0] + NODULE_RADIUS, LUNG_Y, LUNG_Z)
VESSELS = [
    ((LUNG_CENTRE_X, 0.0, 110.0), 5.0),
    ((-LUNG_CENTRE_X, 20.0, 90.0), 5.0),
    ((-60.0, -20.0, 140.0), 4.0),
]
BOWEL_GAS = ((0.0, 40.0, 10.0), 14.0)


def _chest(
    *,
    pixel_mm: float = 1.5,
    slice_mm: float = 5.0,
    direction: np.ndarray | None = None,
    bridge: bool = False,
    seed: int = 0,
) -> tuple[Volume, dict[str, np.ndarray]]:
    """A synthetic chest CT and its ground-truth regions (boolean arrays on the volume's grid)."""
    direction = np.eye(3) if direction is None else np.asarray(direction, dtype=float)
    ny = int(round(240 / pixel_mm))
    nx = int(round(336 / pixel_mm))
    nz = int(round(240 / slice_mm))
    spacing = (slice_mm, pixel_mm, pixel_mm)
    # Put the image centre at world (0, 0, zc): the chest spans world z 0 .. 2 zc, whatever the direction.
    centre_index = np.array([(nz - 1) / 2, (ny - 1) / 2, (nx - 1) / 2])
    probe = Volume(np.zeros((1, 1, 1)), spacing, (0.0, 0.0, 0.0), direction)
    origin = np.array([0.0, 0.0, (nz - 1) * slice_mm / 2]) - probe.index_to_world(centre_index)
    volume = Volume(np.zeros((nz, ny, nx), np.int16), spacing, tuple(origin), direction)
    affine = volume.affine
    kk = np.arange(nz, dtype=np.float32).reshape(-1, 1, 1)
    jj = np.arange(ny, dtype=np.float32).reshape(1, -1, 1)
    ii = np.arange(nx, dtype=np.float32).reshape(1, 1, -1)
    x, y, z = (
        np.broadcast_to(a[0] * kk + a[1] * jj + a[2] * ii + a[3], (nz, ny, nx)) for a in affine[:3]
    )

    def ball(centre, radius):
        return (x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2 <= radius**2

    def segment_tube(start, end, radius):
        a, d = np.asarray(start), np.asarray(end) - np.asarray(start)
        px, py, pz = x - a[0], y - a[1], z - a[2]
        t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / (d @ d), 0.0, 1.0)
        return (px - t * d[0]) ** 2 + (py - t * d[1]) ** 2 + (pz - t * d[2]) ** 2 <= radius**2

    truth: dict[str, np.ndarray] = {}
    truth["body"] = (x / BODY_AXES[0]) ** 2 + (y / BODY_AXES[1]) ** 2 <= 1.0
    for name, sign in (("left", 1.0), ("right", -1.0)):
        truth[name] = (
            ((x - sign * LUNG_CENTRE_X) / LUNG_AXES[0]) ** 2
            + ((y - LUNG_Y) / LUNG_AXES[1]) ** 2
            + ((z - LUNG_Z) / LUNG_AXES[2]) ** 2
        ) <= 1.0
    truth["trachea"] = segment_tube((0.0, -10.0, 400.0), (0.0, -10.0, CARINA_Z), 8.0)
    bronchi = segment_tube((0.0, -10.0, CARINA_Z), (45.0, 0.0, CARINA_Z - 35), 6.0)
    bronchi |= segment_tube((0.0, -10.0, CARINA_Z), (-45.0, 0.0, CARINA_Z - 35), 6.0)
    truth["bronchi"] = bronchi
    truth["bridge"] = (np.abs(x) <= 35) & (y >= -40) & (y <= -32) & (z >= 90) & (z <= 130)
    truth["bowel"] = ball(*BOWEL_GAS)
    truth["nodule"] = ball(NODULE_CENTRE, NODULE_RADIUS)
    truth["vessels"] = np.zeros_like(truth["body"])
    for k, (centre, radius) in enumerate(VESSELS):
        truth[f"vessel{k}"] = ball(centre, radius)
        truth["vessels"] |= truth[f"vessel{k}"]

    hu = np.full((nz, ny, nx), -1000.0)
    hu[truth["body"]] = 40.0
    lungs = truth["left"] | truth["right"] | (truth["bridge"] if bridge else False)
    hu[lungs] = -850.0
    hu[truth["vessels"] | truth["nodule"]] = 40.0
    hu[truth["trachea"] | truth["bronchi"] | truth["bowel"]] = -1000.0
    hu += np.random.default_rng(seed).normal(0.0, 20.0, hu.shape)
    return volume.with_array(np.round(hu).astype(np.int16)), truth


def _fraction_inside(region: np.ndarray, mask: np.ndarray) -> float:
    return float(np.count_nonzero(region & mask)) / float(np.count_nonzero(region))


def _ellipsoid_ml() -> float:
    return 4.0 / 3.0 * np.pi * float(np.prod(LUNG_AXES)) / 1000.0


@pytest.fixture(scope="module")
def chest():
    volume, truth = _chest()
    return volume, truth, segment_lungs(volume)


def test_synthetic_chest_lungs_sides_and_volumes(chest):
    volume, truth, seg = chest
    assert not np.any(seg.left & seg.right)
    assert np.array_equal(seg.lungs, seg.left | seg.right)
    # Patient left is world +x: the left mask is the +x ellipsoid.
    assert _fraction_inside(truth["left"] & ~truth["bronchi"], seg.left) > 0.95
    assert _fraction_inside(truth["right"] & ~truth["bronchi"], seg.right) > 0.95
    assert not np.any(seg.left & truth["right"])
    expected = _ellipsoid_ml()
    assert seg.left_ml == pytest.approx(expected, rel=0.08)
    assert seg.right_ml == pytest.approx(expected, rel=0.08)
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    assert seg.volume_ml["lungs"] == pytest.approx(np.count_nonzero(seg.lungs) * voxel_ml)
    labels = seg.label_map()
    assert np.array_equal(labels == 1, seg.right) and np.array_equal(labels == 2, seg.left)


def test_synthetic_chest_airways_and_outside_air_are_not_lung(chest):
    _, truth, seg = chest
    trachea_in_chest = truth["trachea"] & truth["body"]
    assert not np.any(seg.lungs & truth["trachea"])
    assert not np.any(seg.airways & seg.lungs)
    assert _fraction_inside(trachea_in_chest, seg.airways) > 0.9
    # The main bronchi outside the lungs (in the mediastinum) are airways.
    mediastinal_bronchi = truth["bronchi"] & ~truth["left"] & ~truth["right"]
    assert _fraction_inside(mediastinal_bronchi, seg.airways) > 0.8
    assert not np.any(seg.lungs & ~truth["body"])
    assert not np.any(seg.lungs & truth["bowel"])
    assert _fraction_inside(truth["body"], seg.body) > 0.99
    assert not np.any(seg.body & ~truth["body"] & ~_dilated(truth["body"]))


def _dilated(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_dilation(mask, iterations=2)


def test_synthetic_chest_vessels_and_juxtapleural_nodule_are_kept(chest):
    _, truth, seg = chest
    for k in range(len(VESSELS)):
        assert _fraction_inside(truth[f"vessel{k}"], seg.lungs) > 0.95
    # The nodule touches the chest wall: it must stay in the (right) lung.
    assert _fraction_inside(truth["nodule"], seg.right) >= 0.95


@pytest.mark.parametrize(
    "direction",
    [
        np.diag([-1.0, -1.0, 1.0]),  # columns run to world -x: the patient's left is on the image's left
        np.diag([1.0, -1.0, -1.0]),  # slices run from head to feet, rows towards anterior
    ],
    ids=["x-flipped", "z-flipped"],
)
def test_touching_lungs_are_split_and_named_with_other_directions(direction):
    volume, truth = _chest(direction=direction, bridge=True, seed=1)
    seg = segment_lungs(volume)
    assert _fraction_inside(truth["left"] & ~truth["bronchi"], seg.left) > 0.95
    assert _fraction_inside(truth["right"] & ~truth["bronchi"], seg.right) > 0.95
    bridge = truth["bridge"] & ~truth["left"] & ~truth["right"]
    assert _fraction_inside(bridge, seg.lungs) > 0.9
    assert ndimage.label(seg.lungs)[1] == 1  # the lungs really touch, yet get two sides
    # The junction is shared out by side: no left voxel at world x < -2 mm and vice versa.
    world_x = _world_x(volume)
    assert not np.any(seg.left & (world_x < -2.0))
    assert not np.any(seg.right & (world_x > 2.0))
    assert _fraction_inside(truth["nodule"], seg.right) >= 0.95


def _world_x(volume: Volume) -> np.ndarray:
    nz, ny, nx = volume.shape
    jj, ii = np.meshgrid(np.arange(ny), np.arange(nx), indexing="ij")
    idx = np.stack([np.zeros_like(jj), jj, ii], axis=-1).reshape(-1, 3).astype(float)
    x = volume.index_to_world(idx)[:, 0].reshape(ny, nx)
    return np.broadcast_to(x, volume.shape)


@pytest.mark.slow
def test_fine_grid_is_downsampled_and_the_nodule_survives_the_upsampling():
    volume, truth = _chest(pixel_mm=0.75, slice_mm=5.0, seed=2)
    steps: list[tuple[int, int]] = []
    seg = segment_lungs(volume, progress=lambda step, total: steps.append((step, total)))
    assert steps[-1][0] == steps[-1][1]
    assert _fraction_inside(truth["nodule"], seg.right) >= 0.95
    assert _fraction_inside(truth["vessels"], seg.lungs) > 0.95
    assert seg.left_ml == pytest.approx(_ellipsoid_ml(), rel=0.08)
    assert not np.any(seg.lungs & truth["trachea"])


def test_no_lung_raises():
    volume, truth = _chest()
    solid = np.where(truth["body"], 40, -1000).astype(np.int16)
    with pytest.raises(LungSegmentationError, match="no lung"):
        segment_lungs(volume.with_array(solid))
    with pytest.raises(LungSegmentationError, match="downsample"):
        segment_lungs(volume, downsample=0)


# --- the two real series -----------------------------------------------------------------------

DATA = os.environ.get("WSNODULE_DATA")


def _read_series(path: Path) -> Volume:
    try:
        from wsnodule_core.io.readers import read_volume
    except ImportError:  # the reader is not there yet: read the series with SimpleITK
        import SimpleITK as sitk

        from wsnodule_core.io.sitk_bridge import from_sitk

        reader = sitk.ImageSeriesReader()
        reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(path)))
        return from_sitk(reader.Execute())
    return read_volume(path)


@pytest.mark.slow
@pytest.mark.skipif(not DATA, reason="WSNODULE_DATA is not set: the real chest CT series are not available")
@pytest.mark.parametrize("series", ["cptac-c3n-00247", "tcga-34-2605"])
def test_real_series(series):
    path = Path(DATA) / "chest-ct" / series
    if not path.is_dir():
        pytest.skip(f"{path} does not exist")
    volume = _read_series(path)
    start = time.perf_counter()
    seg = segment_lungs(volume)
    elapsed = time.perf_counter() - start
    total = seg.lungs_ml
    assert 2000.0 < total < 8000.0
    assert seg.left_ml > 0.2 * total and seg.right_ml > 0.2 * total
    # Patient left (+x world) holds the left mask.
    x = _world_x(volume)
    assert np.mean(x[seg.left]) > np.mean(x[seg.right])
    assert 5.0 < seg.airways_ml < 150.0
    assert not np.any(seg.airways & seg.lungs)
    assert elapsed < 60.0


# --- the crop --------------------------------------------------------------------------------------


def _box_volume(shape=(3, 100, 120), spacing=(2.5, 0.8, 0.7)) -> tuple[Volume, np.ndarray]:
    rng = np.random.default_rng(5)
    values = rng.integers(-1000, 400, shape).astype(np.int16)
    volume = Volume(values, spacing, (-40.0, 12.5, 300.0), np.eye(3))
    lungs = np.zeros(shape, bool)
    lungs[:, 30:61, 20:81] = True  # bounding box rows 30..60, cols 20..80: centre (45, 50)
    return volume, lungs


def test_crop_geometry_is_exact_and_centred():
    volume, lungs = _box_volume()
    crop = lung_crop(volume, lungs, size=41)
    assert isinstance(crop, CropResult)
    assert crop.volume.shape == (3, 41, 41)
    # Crop centre pixel (20, 20) is the box centre (45, 50).
    assert crop.offset_yx == (25, 30)
    for k, j, i in [(0, 0, 0), (2, 40, 40), (1, 7, 33)]:
        src = (k, j + 25, i + 30)
        world = crop.volume.index_to_world([k, j, i])
        np.testing.assert_allclose(world, volume.index_to_world(src), atol=1e-9)
        assert crop.volume.array[k, j, i] == volume.array[src]
    np.testing.assert_allclose(crop.crop_to_source_index([1, 7, 33]), [1, 32, 63])


def test_crop_pads_with_fill_value():
    volume, lungs = _box_volume()
    crop = lung_crop(volume, lungs, size=160, fill_hu=-2000)
    # Offsets: 45 - 79.5 -> -34 (half rounds up), 50 - 79.5 -> -29;
    # the image fills crop rows 34..133 and columns 29..148.
    assert crop.offset_yx == (-34, -29)
    assert crop.volume.array.dtype == np.int16
    inside = np.zeros((160, 160), bool)
    inside[34:134, 29:149] = True
    assert np.all(crop.volume.array[:, ~inside] == -2000)
    assert np.array_equal(crop.volume.array[:, inside].reshape(3, 100, 120), volume.array)


def test_crop_with_resampling_keeps_world_positions():
    volume, lungs = _box_volume()
    crop = lung_crop(volume, lungs, size=30, pixel_spacing_mm=1.6)  # 2x the 0.8 mm rows
    assert crop.volume.spacing == (2.5, 1.6, 1.6)
    assert crop.scale_yx == pytest.approx((2.0, 1.6 / 0.7))
    for index in [(0, 0, 0), (2, 29, 29), (1, 10, 3)]:
        source_world = volume.index_to_world(crop.crop_to_source_index(index))
        np.testing.assert_allclose(crop.volume.index_to_world(index), source_world, atol=1e-6)
    # Rows land on source rows (scale 2); columns fall between two source columns: linear interpolation.
    k, j = 1, 12
    src_row = (j + crop.offset_yx[0]) * 2
    c = (5 + crop.offset_yx[1]) * crop.scale_yx[1]
    c0 = int(np.floor(c))
    expected = (1 - (c - c0)) * volume.array[k, src_row, c0] + (c - c0) * volume.array[k, src_row, c0 + 1]
    assert crop.volume.array[k, j, 5] == pytest.approx(expected, abs=0.05)


def test_uncrop_round_trips_masks():
    volume, lungs = _box_volume()
    crop = lung_crop(volume, lungs, size=64)
    mask_crop = np.zeros(crop.volume.shape, bool)
    mask_crop[1, 10:20, 30:44] = True
    back = uncrop_mask(mask_crop, crop, volume)
    assert back.shape == volume.shape
    expected = np.zeros(volume.shape, bool)
    oy, ox = crop.offset_yx
    expected[1, 10 + oy : 20 + oy, 30 + ox : 44 + ox] = True
    assert np.array_equal(back, expected)
    assert np.array_equal(crop_mask(back, crop), mask_crop)
    # Resampled: the crop grid's points are source points along rows, so crop -> source -> crop is exact.
    crop2 = lung_crop(volume, lungs, size=40, pixel_spacing_mm=1.6)
    m2 = np.zeros(crop2.volume.shape, bool)
    m2[:, 5:25, 8:30] = True
    back2 = uncrop_mask(m2, crop2, volume)
    assert np.array_equal(crop_mask(back2, crop2), m2)
    # Area scales with the pixel area ratio (1.6^2 / (0.8 * 0.7)) up to the rounding at the edges.
    ratio = np.count_nonzero(back2) / np.count_nonzero(m2)
    assert ratio == pytest.approx(1.6 * 1.6 / (0.8 * 0.7), rel=0.15)


def test_crop_errors():
    volume, lungs = _box_volume()
    with pytest.raises(LungSegmentationError, match="empty"):
        lung_crop(volume, np.zeros_like(lungs))
    with pytest.raises(GeometryMismatchError):
        lung_crop(volume, lungs[:, :50])
    with pytest.raises(LungSegmentationError, match="size"):
        lung_crop(volume, lungs, size=0)
    with pytest.raises(LungSegmentationError, match="pixel_spacing_mm"):
        lung_crop(volume, lungs, pixel_spacing_mm=-1.0)
    crop = lung_crop(volume, lungs, size=32)
    with pytest.raises(GeometryMismatchError):
        uncrop_mask(np.zeros((3, 31, 32), bool), crop, volume)


def test_crop_of_a_segmentation_on_the_synthetic_chest(chest):
    volume, _, seg = chest
    crop = lung_crop(volume, seg, size=200)
    lungs_crop = crop_mask(seg.lungs, crop)
    # The whole lung fits in 200 x 200 pixels of 1.5 mm and comes back unchanged.
    assert np.count_nonzero(lungs_crop) == np.count_nonzero(seg.lungs)
    assert np.array_equal(uncrop_mask(lungs_crop, crop, volume), seg.lungs)
    rows = np.flatnonzero(lungs_crop.any(axis=(0, 2)))
    cols = np.flatnonzero(lungs_crop.any(axis=(0, 1)))
    assert abs((rows[0] + rows[-1]) / 2 - 99.5) <= 0.5
    assert abs((cols[0] + cols[-1]) / 2 - 99.5) <= 0.5
