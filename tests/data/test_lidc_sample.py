"""The shipped real sample (a LIDC-IDRI-0001 crop): its files, its loader, and its builder (the cropping
and the choice of the box on synthetic volumes; the rebuild from the LIDC DICOM files with WSNODULE_DATA)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy import ndimage

from wsnodule_core.data.sample import (
    MAX_SAMPLE_BYTES,
    SAMPLE_FILES,
    CropBox,
    SampleSettings,
    build_lidc_sample,
    choose_crop,
    crop_volume,
    load_lidc_sample,
    region_box,
    sample_folder,
    z_window,
)
from wsnodule_core.errors import DatasetBuildError, GeometryMismatchError, OutputExistsError
from wsnodule_core.io.volume import Volume, VolumeMetadata

PATIENT = "LIDC-IDRI-0001"


@pytest.fixture(scope="module")
def sample():
    return load_lidc_sample()


# --- the shipped files --------------------------------------------------------------------------------

def test_the_sample_folder_holds_the_four_files_within_5_mb():
    folder = sample_folder()
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted(SAMPLE_FILES)  # nothing else is shipped
    total = sum(len(folder.joinpath(n).read_bytes()) for n in names)
    assert 0 < total <= MAX_SAMPLE_BYTES == 5_000_000
    text = folder.joinpath("ATTRIBUTION.txt").read_text()
    assert "LIDC-IDRI" in text and "CC BY 3.0" in text and "10.7937/K9/TCIA.2015.LO9QL9SX" in text


def test_the_loader_gives_int16_hu_and_a_label_on_the_same_grid(sample):
    ct, label, info = sample.ct, sample.label, sample.info
    assert ct.array.dtype == np.int16 and label.array.dtype == np.uint8
    assert ct.same_geometry(label) and ct.shape == tuple(info["shape_zyx"])
    assert np.allclose(ct.spacing, info["spacing_zyx"]) and np.allclose(ct.origin, info["origin_xyz"], atol=1e-3)
    hu = ct.array
    assert -2048 <= hu.min() and hu.max() <= 3071  # the scanner's range, unscaled
    assert np.mean(hu < -900) > 0.05 and np.mean((hu > -100) & (hu < 100)) > 0.05  # lung air and soft tissue
    assert ct.metadata.patient_id == PATIENT and ct.metadata.series_uid == info["series_uid"]
    assert ct.metadata.dicom_files == ()  # a crop: no DICOM-SEG may reference the series' files


def test_the_label_is_one_solid_nodule_as_sample_json_says(sample):
    label, info = sample.label.array, sample.info
    nodule = info["nodule"]
    assert set(np.unique(label)) == {0, 1}
    _, count = ndimage.label(label)
    assert count == 1 == nodule["n_components"]
    assert int(label.sum()) == nodule["label_voxels"]
    centre = np.argwhere(label).mean(axis=0)
    np.testing.assert_allclose(centre, nodule["centre_zyx"], atol=1e-3)
    np.testing.assert_allclose(sample.ct.index_to_world(centre), nodule["centre_xyz"], atol=1e-2)
    assert nodule["diameter_mm"] >= 3.0 and nodule["n_readers"] == len(nodule["reader_diameters_mm"]) >= 1
    assert np.mean(sample.ct.array[label > 0]) > -300  # a solid nodule, denser than lung
    box = info["crop_box"]
    assert np.subtract(box["stop_zyx"], box["start_zyx"]).tolist() == info["shape_zyx"]
    assert info["patient_id"] == PATIENT and info["attribution"]["license"] == "CC BY 3.0"


def test_the_nodule_dict_is_a_nodule_record(sample):
    from wsnodule_core.data.insertion import NoduleRecord

    record = NoduleRecord.from_dict(sample.info["nodule"])
    assert record.label == 1 and record.patient_id == PATIENT


@pytest.mark.slow
def test_lungs_and_blob_filter_run_on_the_sample(sample):
    from wsnodule_core.baselines.blob_filter import segment_blobs
    from wsnodule_core.data.lung import segment_lungs

    lungs = segment_lungs(sample.ct)
    assert lungs.left_ml > 500 and lungs.right_ml > 500  # both lungs found in the crop
    nodule = sample.label.array > 0
    assert np.mean(lungs.lungs[nodule]) > 0.9
    blobs = segment_blobs(sample.ct, lungs.lungs)
    hit = np.unique(blobs.mask[nodule])
    assert blobs.n_nodules >= 1 and hit.max() > 0  # the baseline finds the nodule


# --- cropping and box geometry on synthetic volumes ----------------------------------------------------

def _oblique_volume() -> Volume:
    angle = np.deg2rad(30)
    direction = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, -1.0]])
    array = np.random.default_rng(0).integers(-1024, 3000, size=(12, 20, 24)).astype(np.int16)
    return Volume(array, (2.5, 0.7, 0.8), (-100.0, 50.0, 300.0), direction,
                  VolumeMetadata(modality="CT", patient_id="p", dicom_files=("a.dcm",) * 12))


def test_crop_volume_keeps_values_and_world_positions():
    source = _oblique_volume()
    box = CropBox((3, 5, 7), (9, 17, 20))
    crop = crop_volume(source, box)
    assert crop.shape == box.shape == (6, 12, 13)
    np.testing.assert_array_equal(crop.array, source.array[3:9, 5:17, 7:20])
    assert crop.array.dtype == np.int16
    grid = np.argwhere(np.ones(crop.shape, bool)).astype(float)
    np.testing.assert_allclose(crop.index_to_world(grid), source.index_to_world(grid + box.start), atol=1e-9)
    back = np.rint(source.world_to_index(crop.index_to_world(grid))).astype(int)
    np.testing.assert_array_equal(source.array[tuple(back.T)], crop.array.ravel())
    assert crop.metadata.patient_id == "p" and crop.metadata.dicom_files == ()
    assert crop.metadata.extra["crop_start_zyx"] == (3, 5, 7)


def test_crop_boxes_are_checked():
    with pytest.raises(GeometryMismatchError, match="reaches outside"):
        crop_volume(_oblique_volume(), CropBox((0, 0, 0), (13, 20, 24)))
    with pytest.raises(GeometryMismatchError, match="0 <= start < stop"):
        CropBox((0, 5, 0), (4, 5, 3))


def test_z_window_and_region_box():
    assert z_window(10, 6, 40) == (7, 13)
    assert z_window(1, 6, 40) == (0, 6) and z_window(39, 6, 40) == (34, 40)
    assert z_window(5, 60, 40) == (0, 40)
    region = np.zeros((10, 50, 60), bool)
    region[2:8, 10:20, 30:40] = True
    region[9, 0, 0] = True  # outside the slices asked for: ignored
    box = region_box(region, (2, 8), margin_mm=2.0, spacing=(1.0, 1.0, 0.5))
    assert box == CropBox((2, 8, 26), (8, 22, 44))
    assert region_box(region, (0, 10), 100.0, (1.0, 1.0, 1.0)) == CropBox((0, 0, 0), (10, 50, 60))
    with pytest.raises(GeometryMismatchError, match="empty"):
        region_box(region, (0, 2), 1.0, (1.0, 1.0, 1.0))


# --- the choice of the box on a synthetic chest ----------------------------------------------------------

@pytest.fixture(scope="module")
def phantom_chest():
    """A procedural chest CT with a 12 mm solid ball in the left lung, and its nodule mask."""
    from wsnodule_core.data.phantom.phantom import make_phantom

    phantom = make_phantom((40, 128, 128), (5.0, 2.5, 2.5), seed=0)
    centre = np.argwhere(phantom.left_lung).mean(axis=0).round()
    grids = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip((40, 128, 128), centre, (5.0, 2.5, 2.5))],
                        indexing="ij")
    ball = sum(g ** 2 for g in grids) <= 6.0 ** 2
    array = phantom.volume.array.copy()
    array[ball] = 40
    return phantom.volume.with_array(array), ball


def _voxels(ct: Volume, label: np.ndarray) -> int:
    return ct.array.size  # a size measure the test controls


def test_choose_crop_keeps_the_nodule_side_and_shrinks_to_the_budget(phantom_chest):
    from wsnodule_core.data.lung import segment_lungs

    volume, ball = phantom_chest
    lungs = segment_lungs(volume)
    roomy = choose_crop(volume, ball, lungs, SampleSettings(max_slices=30, min_slices=20, max_bytes=10**9),
                        measure=_voxels)
    assert roomy.kind == "lung side" and roomy.box.shape[0] == 30 and roomy.box.contains(ball)
    assert roomy.lung_check["recovered"] >= 0.95 and roomy.lung_check["nodule_in_lungs"] >= 0.9
    assert roomy.box.start[2] > 0  # the right lung (low x) is left out
    per_slice = roomy.box.shape[1] * roomy.box.shape[2]
    tight = choose_crop(volume, ball, lungs, SampleSettings(max_slices=30, min_slices=20,
                                                            max_bytes=27 * per_slice + 16_000), measure=_voxels)
    assert tight.box.shape[0] == 26 and tight.box.contains(ball)


def test_choose_crop_takes_both_lungs_when_the_side_loses_its_lung(phantom_chest):
    from wsnodule_core.data.lung import segment_lungs

    volume, ball = phantom_chest
    centre = np.argwhere(ball).mean(axis=0).round().astype(int)
    array = volume.array.copy()
    array[5:35, centre[1] - 8 : centre[1] + 8, 50:80] = -850  # the lungs meet across the midline
    bridged = volume.with_array(array)
    choice = choose_crop(bridged, ball, segment_lungs(bridged), SampleSettings(max_slices=30, min_slices=20,
                                                                               max_bytes=10**9), measure=_voxels)
    assert choice.kind == "both lungs" and choice.lung_check["recovered"] >= 0.95
    assert len(choice.rejected) == 1 and choice.rejected[0].startswith("lung side")


def test_choose_crop_says_when_nothing_fits(phantom_chest):
    from wsnodule_core.data.lung import segment_lungs

    volume, ball = phantom_chest
    with pytest.raises(DatasetBuildError, match="no crop passes.*no box of 20 to 30 slices"):
        choose_crop(volume, ball, segment_lungs(volume),
                    SampleSettings(max_slices=30, min_slices=20, max_bytes=20_000), measure=_voxels)


def test_the_builder_refuses_a_non_empty_folder_before_reading(tmp_path, monkeypatch):
    monkeypatch.delenv("WSNODULE_DATA", raising=False)
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not empty"):
        build_lidc_sample(tmp_path)
    assert (tmp_path / "mine.txt").read_text() == "keep me"


# --- with the LIDC DICOM files ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lidc_root():
    import os
    from pathlib import Path

    value = os.environ.get("WSNODULE_DATA")
    if not value:
        pytest.skip("WSNODULE_DATA is not set: point it at the shared data folder to rebuild the sample")
    root = Path(value) / "lidc-idri"
    if not (root / PATIENT).is_dir():
        pytest.skip(f"{root / PATIENT} is missing from WSNODULE_DATA")
    return root


@pytest.mark.slow
def test_rebuilding_reproduces_the_shipped_sample(lidc_root, sample, tmp_path):
    from wsnodule_core.io.readers import read_volume

    built = build_lidc_sample(tmp_path / "sample", lidc_root=lidc_root)
    assert built.total_bytes <= MAX_SAMPLE_BYTES
    ct, label = read_volume(built.out / "ct.nii.gz"), read_volume(built.out / "label.nii.gz")
    np.testing.assert_array_equal(ct.array, sample.ct.array)
    np.testing.assert_array_equal(label.array, sample.label.array)
    for a, b in ((ct, sample.ct), (label, sample.label)):
        assert a.spacing == b.spacing and a.origin == b.origin and np.array_equal(a.direction, b.direction)
    assert json.loads((built.out / "sample.json").read_text()) == sample.info
    assert (built.out / "ATTRIBUTION.txt").read_text() == sample_folder().joinpath("ATTRIBUTION.txt").read_text()


def test_the_crop_lies_where_it_was_cut_from_the_source(lidc_root, sample):
    from wsnodule_core.io.readers import read_volume

    info = sample.info
    scan_folder = next(p for p in (lidc_root / PATIENT).rglob("*") if p.is_dir() and p.name == info["series_uid"])
    source = read_volume(scan_folder)
    assert source.metadata.series_uid == info["series_uid"]
    ct = sample.ct
    rng = np.random.default_rng(0)
    picks = np.vstack([rng.integers(0, ct.shape, size=(2000, 3)), np.array(ct.shape) - 1, np.zeros(3, int)])
    continuous = source.world_to_index(ct.index_to_world(picks.astype(float)))
    np.testing.assert_allclose(continuous, np.rint(continuous), atol=1e-3)  # crop voxels sit on source voxels
    where = np.rint(continuous).astype(int)
    np.testing.assert_array_equal(source.array[tuple(where.T)], ct.array[tuple(picks.T)])
    np.testing.assert_array_equal(where[-1], info["crop_box"]["start_zyx"])
