"""Real-texture insertion: LIDC VOIs (their own HU inside their mask) pasted by the insertion engine.

Synthetic VOI folders written here cover the code without data; the tests on the real VOIs and
the real cptac CT skip without WSNODULE_DATA.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from wsnodule_core.cli.main import main
from wsnodule_core.data.builders import build_dataset
from wsnodule_core.data.builders.splits import patient_split
from wsnodule_core.data.insertion import insert_nodules
from wsnodule_core.data.lidc.vois import read_voi_table
from wsnodule_core.data.real_nodules import load_real_nodules, resample_real_nodule
from wsnodule_core.errors import DatasetBuildError, InputPathNotFoundError, InsertionParameterError
from wsnodule_core.io.volume import Volume
from wsnodule_core.io.writers import write_volume

VOI_SPACING = (2.0, 1.0, 1.0)
CROP = (7, 21, 21)  # the nodule's slices only (as the real crops), a 10 mm margin in-plane
SURROUND_HU = -500
COLUMNS = ["patient_id", "nodule_id", "seriesuid", "coordX", "coordY", "coordZ", "diameter_mm",
           "Texture", "Texture_value", "Malignancy", "Malignancy_value"]


def voi_arrays(radius_mm: float = 6.0, crop=CROP) -> tuple[np.ndarray, np.ndarray]:
    """A ball mask and an image whose nodule voxels hold distinct values (each says where it was)."""
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(crop, VOI_SPACING)], indexing="ij")
    mask = sum(g * g for g in grids) <= radius_mm ** 2
    image = np.full(crop, SURROUND_HU, np.int16)
    image[mask] = -300 + np.arange(int(mask.sum()), dtype=np.int16)
    return image, mask.astype(np.uint8)


def write_voi_folder(root: Path, patients, radius_mm: float = 6.0, crop=CROP, texture: int = 4) -> Path:
    (root / "image").mkdir(parents=True)
    (root / "nodule_mask").mkdir()
    rows = []
    for i, patient in enumerate(patients):
        image, mask = voi_arrays(radius_mm, crop)
        name = f"{patient}_R_1"
        origin = (10.0 * i, -5.0, 100.0)
        write_volume(Volume(image, VOI_SPACING, origin, np.eye(3)), root / "image" / f"{name}.nii.gz")
        write_volume(Volume(mask, VOI_SPACING, origin, np.eye(3)), root / "nodule_mask" / f"{name}.nii.gz")
        rows.append([patient, 1, f"1.2.3.{i}", 10.0 * i + 10, 5.0, 106.0, 2 * radius_mm,
                     "Part Solid/Mixed", texture, "Indeterminate", 3])
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(COLUMNS)
        writer.writerows(rows)
    return root


@pytest.fixture
def voi_folder(tmp_path):
    return write_voi_folder(tmp_path / "vois", ["LIDC-IDRI-0001", "LIDC-IDRI-0100", "LIDC-IDRI-0101",
                                                "LIDC-IDRI-0102", "LIDC-IDRI-0103", "LIDC-IDRI-0104"])


def background(shape=(21, 61, 61), hu=-850) -> tuple[Volume, np.ndarray]:
    direction = np.diag([-1.0, -1.0, 1.0])
    volume = Volume(np.full(shape, hu, np.int16), VOI_SPACING, (12.5, -30.0, -140.0), direction)
    lungs = np.zeros(shape, bool)
    lungs[2:-2, 5:-5, 5:-5] = True
    return volume, lungs


def paste_one(nodule):
    volume, lungs = background()
    result = insert_nodules(volume, lungs, [nodule], seed=0, augment=False, placements="isolated",
                            vessels=np.zeros_like(lungs), on_failure="raise")
    res = resample_real_nodule(nodule, VOI_SPACING)
    support = (res.occupancy > 0) | res.mask | (res.weight > 0)
    bbox = ndimage.find_objects(support.astype(np.uint8))[0]
    # where the engine put the crop: the label's first voxel is the mask's first voxel
    start = np.argwhere(result.label_mask == 1).min(axis=0) - np.argwhere(res.mask[bbox]).min(axis=0)
    region = tuple(slice(int(a), int(a) + s.stop - s.start) for a, s in zip(start, bbox))
    return volume, result, res, bbox, region


def test_pasted_hu_equal_the_voi_where_the_occupancy_is_full(voi_folder):
    nodule = load_real_nodules(voi_folder)[0]
    _, result, res, bbox, region = paste_one(nodule)
    full = res.occupancy[bbox] == 1.0
    assert full.sum() > 100
    out = np.asarray(result.volume.array)[region]
    np.testing.assert_array_equal(out[full], np.rint(res.hu[bbox][full]))
    # same spacing, no turn: the resampled HU are the VOI's own voxels, in their own arrangement
    image, mask = voi_arrays()
    values = out[full].astype(int)
    assert set(values) <= set(image[mask.astype(bool)].astype(int))
    first = np.argwhere(full)[0]
    voi_index = np.argwhere(image == out[full][0])[0]
    shift = voi_index - first
    index = np.argwhere(full)
    np.testing.assert_array_equal(image[tuple((index + shift).T)], values)


def test_the_margin_is_blended_not_cut(voi_folder):
    nodule = load_real_nodules(voi_folder)[0]
    volume, result, res, bbox, region = paste_one(nodule)
    weight, hu = res.weight[bbox], res.hu[bbox]
    out = np.asarray(result.volume.array, float)[region]
    edge = (weight > 0) & (weight < 1)
    outside = edge & ~res.mask[bbox] & (np.abs(hu - SURROUND_HU) < 1)
    assert outside.sum() > 20  # the VOI's surroundings fade out over the margin
    assert np.all((out[outside] > -850) & (out[outside] < SURROUND_HU))
    np.testing.assert_allclose(out[edge], weight[edge] * hu[edge] + (1 - weight[edge]) * -850.0, atol=0.51)
    # nothing changes outside the weight's support
    changed = np.asarray(result.volume.array) != np.asarray(volume.array)
    assert not changed[region][weight == 0].any() and changed.sum() == changed[region].sum()


def test_labels_follow_the_occupancy_rule_and_keep_the_volume(voi_folder):
    nodule = load_real_nodules(voi_folder)[0]
    _, result, res, bbox, region = paste_one(nodule)
    np.testing.assert_array_equal(result.label_mask[region] == 1, res.mask[bbox])
    assert (result.label_mask > 0).sum() == res.mask.sum() == round(nodule.volume_mm3 / np.prod(VOI_SPACING))
    top = np.sort(res.occupancy.ravel())[::-1][res.mask.sum() - 1]
    assert res.occupancy[res.mask].min() >= top  # the k most occupied voxels


def test_geometry_and_records_are_the_background_and_the_vois(voi_folder):
    nodule = load_real_nodules(voi_folder)[0]
    volume, result, _, _, _ = paste_one(nodule)
    assert result.volume.same_geometry(volume) and result.volume.array.dtype == np.int16
    record = result.nodules[0]
    assert (record.shape_id, record.patient_id) == ("LIDC-IDRI-0001_R_1", "LIDC-IDRI-0001")
    assert record.texture_rating == 4.0 and record.texture == "part_solid"
    assert record.lidc_annotation_ids == ()
    np.testing.assert_allclose(record.centre_xyz, volume.index_to_world(record.centre_zyx))


def test_a_turned_nodule_keeps_its_volume_and_its_values(voi_folder):
    nodule = load_real_nodules(voi_folder)[0]
    res = resample_real_nodule(nodule, (2.5, 0.7, 0.7), angle_deg=33.0, flip_x=True)
    assert abs(res.volume_mm3 - nodule.volume_mm3) <= 0.5 * 2.5 * 0.49
    inside = res.hu[res.occupancy == 1]
    assert -300 - 1 <= inside.min() and inside.max() <= -300 + nodule.mask.sum()
    assert np.all(res.weight >= res.occupancy - 1e-6)


def test_real_sets_split_nodules_by_patient_split(voi_folder, tmp_path):
    info = build_dataset(tmp_path / "set", source="phantom", size="tiny", nodules="real", vois=voi_folder,
                         n_cases=6, nodules_per_case=(1, 2), seed=1)
    doc = json.loads(info.json_path.read_text())
    assert doc["parameters"]["nodules"] == "real" and info.n_nodules > 0
    seen: dict[str, str] = {}
    for case in doc["cases"]:
        for record in case["nodules"]:
            assert record["shape_id"] == f"{record['patient_id']}_R_1"
            patient = record["patient_id"]
            assert case["split"] == patient_split(patient) == seen.setdefault(patient, case["split"])
    assert seen.get("LIDC-IDRI-0001", "test") == "test"


def test_unknown_nodules_and_missing_folders_are_errors(tmp_path, voi_folder):
    with pytest.raises(DatasetBuildError, match="unknown nodules 'voi'"):
        build_dataset(tmp_path / "a", nodules="voi", vois=voi_folder)
    with pytest.raises(InputPathNotFoundError, match="no such VOI folder"):
        build_dataset(tmp_path / "b", nodules="real", vois=tmp_path / "nowhere")


def test_a_set_of_one_split_takes_only_that_splits_patients(tmp_path):
    # split_ratio splits the CT subjects; the VOI patients keep their hash split whatever it is
    # (before the fix, (1, 0, 0) put every VOI patient, val and test ones too, in train)
    voi_folder = write_voi_folder(tmp_path / "vois", ["LIDC-IDRI-0001", "LIDC-IDRI-0100", "LIDC-IDRI-0101",
                                                      "LIDC-IDRI-0011", "LIDC-IDRI-0012"])
    assert [patient_split(p) for p in ("LIDC-IDRI-0100", "LIDC-IDRI-0011")] == ["train", "val"]
    for ratio, wanted in (((1, 0, 0), "train"), ((0, 1, 0), "val")):
        info = build_dataset(tmp_path / wanted, source="phantom", size="tiny", nodules="real", vois=voi_folder,
                             n_cases=4, nodules_per_case=(1, 2), seed=2, split_ratio=ratio)
        doc = json.loads(info.json_path.read_text())
        assert {case["split"] for case in doc["cases"]} == {wanted}
        patients = [n["patient_id"] for case in doc["cases"] for n in case["nodules"]]
        assert all(patient_split(p) == wanted for p in patients)


def test_a_voi_too_small_for_the_grid_is_refused(tmp_path):
    folder = write_voi_folder(tmp_path / "small", ["P1"], radius_mm=2.0, crop=(3, 9, 9))
    nodule = load_real_nodules(folder)[0]
    with pytest.raises(InsertionParameterError, match="VOI P1_R_1 .* fills only"):
        resample_real_nodule(nodule, (5.0, 3.6, 3.6))
    with pytest.raises(DatasetBuildError, match="none of the 1 nodule real is large enough"):
        build_dataset(tmp_path / "set", source="phantom", size="tiny", nodules="real", vois=folder,
                      n_cases=1, nodules_per_case=(1, 1))


def test_a_voi_cut_at_its_crop_border_gets_a_note(tmp_path):
    folder = write_voi_folder(tmp_path / "cut", ["P1"], radius_mm=6.0, crop=(7, 11, 11))
    nodule = load_real_nodules(read_voi_table(folder))[0]
    assert nodule.notes and "touches the crop's in-plane border" in nodule.notes[0]
    info = build_dataset(tmp_path / "set", source="phantom", size="tiny", nodules="real", vois=folder,
                         n_cases=1, nodules_per_case=(1, 1))
    case = json.loads(info.json_path.read_text())["cases"][0]
    assert not case["nodules"] or any("crop's in-plane border" in n for n in case["notes"])


def test_cli_real_nodules_without_a_voi_folder_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("WSNODULE_DATA", raising=False)
    assert main(["data", "phantom", "--out", str(tmp_path / "p"), "--size", "tiny", "--nodules", "real"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("wsnodule data: error: ") and "--vois DIR" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_nodules_option_takes_a_kind_a_range_or_both(tmp_path, voi_folder, capsys):
    out = tmp_path / "p"
    assert main(["data", "phantom", "--out", str(out), "--size", "tiny", "--cases", "1",
                 "--nodules", "real", "1", "1", "--vois", str(voi_folder)]) == 0
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["parameters"]["nodules"] == "real" and doc["parameters"]["nodules_per_case"] == [1, 1]
    with pytest.raises(SystemExit):
        main(["data", "phantom", "--out", str(tmp_path / "q"), "--nodules", "real", "x"])
    assert "give 'shapes' or 'real'" in capsys.readouterr().err


# --- on the real data ---------------------------------------------------------------------------

DATA = os.environ.get("WSNODULE_DATA")
needs_data = pytest.mark.skipif(not DATA or not (Path(DATA or ".") / "lidc-vois").is_dir(),
                                reason="needs WSNODULE_DATA with lidc-vois/ and chest-ct/")


def crude_lungs(ct: Volume) -> np.ndarray:
    """Air inside the body: dark voxels not connected to the image border (enough to place a nodule)."""
    dark = np.asarray(ct.array) < -600
    labels, _ = ndimage.label(dark)
    border = np.unique(np.concatenate([labels[:, 0].ravel(), labels[:, -1].ravel(), labels[:, :, 0].ravel(),
                                       labels[:, :, -1].ravel()]))
    inside = dark & ~np.isin(labels, border)
    return np.stack([ndimage.binary_fill_holes(z) for z in ndimage.binary_opening(inside, iterations=2)])


@needs_data
def test_a_real_voi_in_the_cptac_ct_keeps_its_mean_hu():
    from wsnodule_core.io.readers import read_volume

    table = [v for v in read_voi_table() if v.diameter_mm >= 10 and v.texture == 5][:3]
    nodules = load_real_nodules(table)
    ct = read_volume(Path(DATA) / "chest-ct" / "cptac-c3n-00247")
    result = insert_nodules(ct, crude_lungs(ct), nodules, seed=0)
    assert result.nodules and result.volume.same_geometry(ct)
    for record in result.nodules:
        nodule = next(n for n in nodules if n.name == record.shape_id)
        inserted = np.asarray(result.volume.array)[result.label_mask == record.label].mean()
        assert abs(inserted - nodule.image[nodule.mask].mean()) < 40.0, record.shape_id


@needs_data
@pytest.mark.slow
def test_cli_builds_a_real_texture_hybrid_set(tmp_path):
    out = tmp_path / "h"
    ct = Path(DATA) / "chest-ct" / "cptac-c3n-00247"
    assert main(["data", "hybrid", "--out", str(out), "--cases", "2", "--nodules", "real", "1", "2",
                 "--ct", str(ct), "--spacing", "5", "1.8", "1.8", "--shapes", "120"]) == 0
    doc = json.loads((out / "dataset.json").read_text())
    records = [n for case in doc["cases"] for n in case["nodules"]]
    assert len(doc["cases"]) == 2 and records and all(n["shape_id"].startswith("LIDC-IDRI-") for n in records)
    for case in doc["cases"]:
        assert all(patient_split(n["patient_id"]) == case["split"] for n in case["nodules"])


def test_known_lesions_are_avoided(voi_folder):
    from wsnodule_core.data.hybrid import lesion_mask

    nodule = load_real_nodules(voi_folder)[0]
    volume, lungs = background()
    centre_xyz = volume.index_to_world((10, 30, 22))
    avoid = lesion_mask(volume, [(centre_xyz, 20.0)], margin_mm=3.0)
    assert avoid[10, 30, 22] and avoid[10, 30, 22 + 12] and not avoid[10, 30, 22 + 14]
    for seed in range(4):
        result = insert_nodules(volume, lungs, [nodule], seed=seed, avoid=avoid, vessels=np.zeros_like(lungs))
        assert result.nodules and not (ndimage.binary_dilation(avoid) & (result.label_mask > 0)).any()
    assert lesion_mask(volume, []) is None


def test_box_mask_marks_the_voxels_of_a_world_box_and_tcga_avoids_its_diseased_lung():
    from wsnodule_core.data.hybrid import box_mask, known_lesion_boxes
    from wsnodule_core.io.volume import Volume

    ct = Volume(np.zeros((10, 20, 30), np.int16), spacing=(2.0, 1.0, 1.0), origin=(-15.0, -10.0, 0.0))
    mask = box_mask(ct, [((-5.0, -10.0, 4.0), (4.0, 0.0, 8.0))])
    assert np.array_equal(np.argwhere(mask).min(axis=0), [2, 0, 10])
    assert np.array_equal(np.argwhere(mask).max(axis=0), [4, 10, 19])
    assert box_mask(ct, ()) is None and known_lesion_boxes("cptac-c3n-00247") == ()
    assert len(known_lesion_boxes("tcga-34-2605")) == 1
