"""The LIDC VOI reader and the real-nodule data set (`wsnodule data lidc-vois`): on small synthetic
copies the tests write, and on the real VOIs when WSNODULE_DATA is set."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wsnodule_core.data.builders import build_lidc_voi_dataset
from wsnodule_core.data.builders.splits import HELD_OUT_PATIENTS, patient_split
from wsnodule_core.data.dataset import load_dataset
from wsnodule_core.data.lidc.vois import load_voi, read_voi_table
from wsnodule_core.data.nodule_free import NoduleFreeSource, crop_grid
from wsnodule_core.errors import (
    AnnotationFileError,
    DatasetBuildError,
    EmptyVoiError,
    GeometryMismatchError,
    InputPathNotFoundError,
    UnknownSplitError,
)
from wsnodule_core.io.readers import read_volume
from wsnodule_core.io.volume import Volume
from wsnodule_core.io.writers import write_volume

COLUMNS = ["patient_id", "nodule_id", "seriesuid", "coordX", "coordY", "coordZ", "diameter_mm",
           "Texture", "Texture_value", "Malignancy", "Malignancy_value", "Diagnosis"]


def _patients(split: str, n: int) -> list[str]:
    """Made-up LIDC-style patient ids whose patient_split is ``split``."""
    found = [f"LIDC-IDRI-9{i:03d}" for i in range(999) if patient_split(f"LIDC-IDRI-9{i:03d}") == split]
    return found[:n]


def _voi(shape=(5, 20, 20), spacing=(2.0, 0.7, 0.7), origin=(10.0, -20.0, -100.0), radius=3.0,
         seed=0) -> tuple[Volume, Volume]:
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape)
    c = (np.asarray(shape) - 1) / 2
    d = np.sqrt(((z - c[0]) * spacing[0]) ** 2 + ((y - c[1]) * spacing[1]) ** 2 + ((x - c[2]) * spacing[2]) ** 2)
    mask = (d <= radius).astype(np.uint8)
    image = np.where(mask > 0, 20, -850) + rng.normal(0, 20, shape)
    volume = Volume(image.astype(np.int16), spacing=spacing, origin=origin)
    return volume, volume.with_array(mask)


def write_voi_folder(root: Path, patients: list[str], per_patient: int = 1) -> Path:
    """A VOI folder like ``lidc-vois/``: image/, nodule_mask/, metadata.csv."""
    rows = []
    for p, patient in enumerate(patients):
        for n in range(1, per_patient + 1):
            shape = (4 + (p + n) % 3, 20 + 2 * n, 20)
            image, mask = _voi(shape=shape, spacing=(1.25 * (1 + p % 2), 0.7, 0.7), seed=p * 10 + n)
            name = f"{patient}_R_{n}"
            write_volume(image, root / "image" / f"{name}.nii.gz", overwrite=True)
            write_volume(mask, root / "nodule_mask" / f"{name}.nii.gz", overwrite=True)
            centre = image.index_to_world((np.asarray(shape) - 1) / 2)
            rows.append({"patient_id": patient, "nodule_id": n, "seriesuid": f"1.2.3.{p}",
                         "coordX": centre[0], "coordY": centre[1], "coordZ": centre[2], "diameter_mm": 6.0,
                         "Texture": "Solid", "Texture_value": 5, "Malignancy": "Indeterminate",
                         "Malignancy_value": 3, "Diagnosis": "Benign"})
    with (root / "metadata.csv").open("w", newline="") as handle:
        writer = csv.DictWriter(handle, COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
    return root


def _background(path: Path, seed: int = 0) -> Path:
    from wsnodule_core.data.phantom import make_phantom

    phantom = make_phantom((24, 96, 96), (2.5, 3.0, 3.0), seed=seed)
    write_volume(phantom.volume, path)
    return path


# --- the reader ---------------------------------------------------------------------------


def test_reader_gives_each_voi_with_its_ratings_and_grid(tmp_path):
    root = write_voi_folder(tmp_path / "vois", ["LIDC-IDRI-9001", "LIDC-IDRI-9002"], per_patient=2)
    vois = read_voi_table(root)
    assert [v.name for v in vois] == ["LIDC-IDRI-9001_R_1", "LIDC-IDRI-9001_R_2", "LIDC-IDRI-9002_R_1",
                                      "LIDC-IDRI-9002_R_2"]
    assert vois[0].ratings == {"Texture": 5.0, "Malignancy": 3.0} and vois[0].texture == 5.0
    assert vois[0].rating_texts["Malignancy"] == "Indeterminate" and vois[0].diagnosis == "Benign"
    image, mask = load_voi(vois[1])
    assert image.same_geometry(mask) and mask.array.dtype == np.uint8 and 0 < mask.array.sum() < mask.array.size


def test_reader_refuses_missing_mask_other_grid_and_empty_mask(tmp_path):
    root = write_voi_folder(tmp_path / "vois", ["LIDC-IDRI-9001", "LIDC-IDRI-9002", "LIDC-IDRI-9003"])
    (root / "nodule_mask" / "LIDC-IDRI-9001_R_1.nii.gz").unlink()
    with pytest.raises(InputPathNotFoundError, match="the mask of VOI LIDC-IDRI-9001_R_1"):
        read_voi_table(root)
    write_voi_folder(root, ["LIDC-IDRI-9001", "LIDC-IDRI-9002", "LIDC-IDRI-9003"])
    vois = read_voi_table(root)
    image, mask = load_voi(vois[1])
    moved = Volume(np.asarray(mask.array), spacing=mask.spacing, origin=(0.0, 0.0, 0.0))
    write_volume(moved, vois[1].mask_path, overwrite=True)
    with pytest.raises(GeometryMismatchError, match="must share one grid"):
        load_voi(vois[1])
    _, mask = load_voi(vois[2])
    write_volume(mask.with_array(np.zeros(mask.shape, np.uint8)), vois[2].mask_path, overwrite=True)
    with pytest.raises(EmptyVoiError, match="is empty"):
        load_voi(vois[2])


def test_reader_refuses_a_bad_table(tmp_path):
    root = write_voi_folder(tmp_path / "vois", ["LIDC-IDRI-9001"])
    text = (root / "metadata.csv").read_text()
    (root / "metadata.csv").write_text(text.replace("diameter_mm", "diam"))
    with pytest.raises(AnnotationFileError, match="diameter_mm"):
        read_voi_table(root)
    lines = text.splitlines()
    (root / "metadata.csv").write_text("\n".join([lines[0], lines[1], lines[1]]) + "\n")
    with pytest.raises(AnnotationFileError, match="more than once"):
        read_voi_table(root)
    with pytest.raises(InputPathNotFoundError, match="no such VOI folder"):
        read_voi_table(tmp_path / "nowhere")


# --- the patient split ------------------------------------------------------------------------


def test_patient_split_is_stable_keeps_the_held_out_scans_in_test_and_follows_the_ratio():
    ids = [f"P{i}" for i in range(3000)]
    splits = [patient_split(p) for p in ids]
    assert splits == [patient_split(p) for p in ids]
    shares = [splits.count(s) / len(ids) for s in ("train", "val", "test")]
    assert np.allclose(shares, [4 / 6, 1 / 6, 1 / 6], atol=0.03)
    assert all(patient_split(p) == "test" for p in HELD_OUT_PATIENTS)
    assert {patient_split(p, (1, 0, 0)) for p in ids[:200]} == {"train"}
    with pytest.raises(UnknownSplitError):
        patient_split("P1", (1, -1, 1))


# --- the data set ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def voi_set(tmp_path_factory):
    """A synthetic VOI folder (3 train, 2 test patients), two phantom scans as nodule-free sources
    (one with a lesion box), and the data set built from them."""
    root = tmp_path_factory.mktemp("voi-set")
    train, test = _patients("train", 3), _patients("test", 2)
    vois = write_voi_folder(root / "vois", train + test, per_patient=2)
    box = ((-40.0, -40.0, -40.0), (0.0, 0.0, 0.0))
    sources = [NoduleFreeSource("phantom-a", _background(root / "a.nii.gz", 1), "train", lesion_boxes_xyz=(box,)),
               NoduleFreeSource("phantom-b", _background(root / "b.nii.gz", 2), "test")]
    out = root / "set"
    info = build_lidc_voi_dataset(out, vois=vois, sources=sources, negatives_per_nodule=1.0, clearance_mm=5.0)
    return out, info, train, test, sources, box


def test_positives_are_the_vois_with_their_record_and_split(voi_set):
    out, info, train, test, _, _ = voi_set
    data = load_dataset(out)
    positives = [e for e in data.entries() if e["nodules"]]
    assert len(positives) == 10 and info.n_nodules == 10
    for entry in positives:
        assert entry["split"] == ("train" if entry["subject"] in train else "test")
        case = data.load_case(entry)
        mask = np.asarray(case.mask.array) > 0
        centre = case.image.index_to_world(np.argwhere(mask).mean(axis=0))
        assert np.allclose(case.nodules[0].centre_xyz, centre, atol=1e-2)
        assert case.nodules[0].texture == "solid" and case.nodules[0].shape_id == entry["voi"]
        assert np.asarray(case.lungs).all() and not case.negatives_ok
        assert entry["ratings"]["Malignancy"] == 3.0
        original = read_volume(Path(out).parent / "vois" / "image" / f"{entry['voi']}.nii.gz")
        assert case.image.same_geometry(original) and np.array_equal(case.image.array, original.array)


def test_negatives_come_from_their_splits_scans_on_voi_grids_away_from_lesions(voi_set):
    out, info, train, test, sources, box = voi_set
    data = load_dataset(out)
    negatives = [e for e in data.entries() if not e["nodules"]]
    # one per nodule crop, per split: 6 train crops from phantom-a, 4 test crops from phantom-b
    assert sorted((e["split"], e["subject"]) for e in negatives) == [("test", "phantom-b")] * 4 + \
        [("train", "phantom-a")] * 6
    grids = {s: {(tuple(e["shape"]), tuple(e["spacing"])) for e in data.entries(s) if e["nodules"]}
             for s in ("train", "test")}
    for entry in negatives:
        case = data.load_case(entry)
        assert (tuple(entry["shape"]), tuple(entry["spacing"])) in grids[entry["split"]]
        assert not np.asarray(case.mask.array).any() and case.negatives_ok
        site = np.asarray(case.negative_sites_xyz[0])
        assert np.allclose(case.image.index_to_world((np.asarray(case.image.shape) - 1) / 2), site, atol=1e-3)
        source = next(s for s in sources if s.subject == entry["subject"])
        scan = read_volume(source.path)
        expected = crop_grid(scan, site, case.image.shape, case.image.spacing)
        assert np.allclose(case.image.origin, expected.origin)
        voxel = np.round(scan.world_to_index(site)).astype(int)
        assert abs(float(np.asarray(scan.array)[tuple(voxel)]) - float(case.image.array[tuple(
            (np.asarray(case.image.shape) - 1) // 2)])) < 400  # the crop shows the scan around the site
        if entry["subject"] == "phantom-a":
            lo, hi = np.asarray(box[0]), np.asarray(box[1])
            gap = np.linalg.norm(np.maximum(np.maximum(lo - site, site - hi), 0))
            half = np.linalg.norm((np.asarray(case.image.shape) - 1) / 2 * np.asarray(case.image.spacing))
            assert gap > half + 5.0


def test_patch_cutters_centre_negatives_on_the_sites(voi_set):
    from wsnodule_core.flow.patches import PatchConfig, patches_from_dataset
    from wsnodule_core.nam.patches3d import Patch3DConfig
    from wsnodule_core.nam.patches3d import patches_from_dataset as patches_3d

    out = voi_set[0]
    data = load_dataset(out)
    sites = np.array([e["negative_sites_xyz"][0] for e in data.entries("test") if not e["nodules"]])
    flow = patches_from_dataset(data, "test", PatchConfig(size=16, spacing_mm=2.0, positives_per_nodule=2))
    assert flow.n_positive == 8 and len(flow) == 16  # 2 per nodule, 2 per nodule-free crop, none random
    centred = flow.centres_xyz[flow.labels == 0][::2]  # the first of each site is exactly centred
    assert np.allclose(np.sort(centred, axis=0), np.sort(sites, axis=0), atol=1e-6)
    nam = patches_3d(data, "test", Patch3DConfig(patch_size=8, spacing_mm=2.0, positives_per_nodule=1))
    assert list(nam.labels).count(0) == 4 and list(nam.labels).count(1) == 4


def test_builder_refuses_a_split_without_scans_unknown_patients_and_negative_ratio(tmp_path):
    vois = write_voi_folder(tmp_path / "vois", _patients("train", 1) + _patients("test", 1))
    source = NoduleFreeSource("phantom-a", _background(tmp_path / "a.nii.gz"), "train")
    with pytest.raises(DatasetBuildError, match=r"no nodule-free scan for the split\(s\) \['test'\]"):
        build_lidc_voi_dataset(tmp_path / "out", vois=vois, sources=[source])
    with pytest.raises(DatasetBuildError, match="LIDC-IDRI-0000"):
        build_lidc_voi_dataset(tmp_path / "out", vois=vois, sources=[], patient_ids=["LIDC-IDRI-0000"])
    with pytest.raises(DatasetBuildError, match="negatives_per_nodule"):
        build_lidc_voi_dataset(tmp_path / "out", vois=vois, negatives_per_nodule=-1)
    missing = NoduleFreeSource("gone", tmp_path / "gone", "test")
    with pytest.raises(InputPathNotFoundError, match="gone"):
        build_lidc_voi_dataset(tmp_path / "out", vois=vois, sources=[source, missing])
    assert not (tmp_path / "out").exists()  # every check came before anything was written


def test_cli_builds_without_negatives_and_says_what_is_wrong_in_one_line(tmp_path):
    vois = write_voi_folder(tmp_path / "vois", _patients("train", 2))
    run = [sys.executable, "-m", "wsnodule_core.cli.main", "data", "lidc-vois", "--vois", str(vois)]
    done = subprocess.run(run + ["--out", str(tmp_path / "out"), "--negatives", "0"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "wrote 2 case(s) (train 2, val 0, test 0), 2 nodule(s)" in done.stdout
    document = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert document["parameters"]["split"].startswith("patient_split")
    again = subprocess.run(run + ["--out", str(tmp_path / "out"), "--negatives", "0"], capture_output=True, text=True)
    assert again.returncode != 0 and "Traceback" not in again.stderr and "not empty" in again.stderr


# --- the real VOIs ---------------------------------------------------------------------------


def test_real_vois_read_and_the_held_out_patient_builds_with_real_negatives(wsnodule_data, tmp_path):
    root = wsnodule_data / "lidc-vois"
    if not root.is_dir():
        pytest.skip(f"{root} is missing from WSNODULE_DATA")
    vois = read_voi_table(root)
    assert len(vois) == 904 and len({v.patient_id for v in vois}) == 495
    scan = wsnodule_data / "lidc-idri" / "LIDC-IDRI-0001"
    source = NoduleFreeSource("LIDC-IDRI-0001", scan, "test", kind="lidc")
    info = build_lidc_voi_dataset(tmp_path / "set", vois=root, sources=[source], patient_ids=["LIDC-IDRI-0001"],
                                  negatives_per_nodule=2.0)
    data = load_dataset(info.path)
    (positive,) = [e for e in data.entries() if e["nodules"]]
    assert positive["split"] == "test" and positive["diameter_mm"] > 20
    nodule = np.asarray(positive["nodules"][0]["centre_xyz"])
    assert np.linalg.norm(nodule - np.array([56.2, 86.3, -115.9])) < 2.0  # LUNA16's centre of this nodule
    negatives = [data.load_case(e) for e in data.entries() if not e["nodules"]]
    assert len(negatives) == 2
    for case in negatives:
        site = np.asarray(case.negative_sites_xyz[0])
        assert np.linalg.norm(site - nodule) > 30.0  # far from the annotated nodule
        centre = tuple((np.asarray(case.image.shape) - 1) // 2)
        assert case.image.array[centre] < -300  # centred on lung


def test_default_sources_find_the_scans_and_give_each_patient_one_split(tmp_path):
    from wsnodule_core.data.nodule_free import TCGA_34_2605_EXCLUDED, default_sources

    for folder in ("lidc-idri/LIDC-IDRI-0001", "chest-ct/cptac-c3n-00247", "chest-ct/tcga-34-2605"):
        (tmp_path / folder).mkdir(parents=True)
    found = {s.subject: s for s in default_sources(tmp_path)}
    assert sorted(found) == ["LIDC-IDRI-0001", "cptac-c3n-00247", "tcga-34-2605"]
    assert found["LIDC-IDRI-0001"].split == "test" and found["LIDC-IDRI-0001"].kind == "lidc"
    assert found["tcga-34-2605"].lesion_boxes_xyz == (TCGA_34_2605_EXCLUDED,)


def test_default_sources_on_the_real_data_avoid_the_tumour_boxes(wsnodule_data):
    from wsnodule_core.data.nodule_free import default_sources

    if not (wsnodule_data / "lung-pet-ct-dx").is_dir():
        pytest.skip("lung-pet-ct-dx is missing from WSNODULE_DATA")
    found = {s.subject: s for s in default_sources(wsnodule_data)}
    assert {s.split for s in found.values()} == {"train", "val", "test"}
    assert found["Lung_Dx-A0001"].split == "val" and len(found["Lung_Dx-A0001"].lesion_boxes_xyz) == 1
    assert len(found["Lung_Dx-A0002"].lesion_boxes_xyz) == 2  # both reconstructions' boxes


def test_hard_negatives_are_centred_on_blob_like_lung_away_from_lesions(voi_set, tmp_path):
    from wsnodule_core.data.nodule_free import load_source

    _, _, train, test, sources, box = voi_set
    vois = Path(voi_set[0]).parent / "vois"
    info = build_lidc_voi_dataset(tmp_path / "set", vois=vois, sources=sources, negatives_per_nodule=1.0,
                                  hard_negatives_per_nodule=1.0, clearance_mm=5.0)
    data = load_dataset(info.path)
    hard = [e for e in data.entries() if e.get("hard_negative")]
    plain = [e for e in data.entries() if not e["nodules"] and not e.get("hard_negative")]
    assert len(plain) == 10 and hard and all("_hard_" in e["case_id"] for e in hard)
    assert json.loads((info.path / "dataset.json").read_text())["parameters"]["hard_negatives_per_nodule"] == 1.0
    for source in sources:
        loaded = load_source(source)
        blob = set(loaded.blob_voxels.tolist())
        sites = [data.load_case(e).negative_sites_xyz[0] for e in hard if e["subject"] == source.subject]
        for site in sites:
            voxel = tuple(np.round(loaded.volume.world_to_index(site)).astype(int))
            assert np.ravel_multi_index(voxel, loaded.volume.shape) in blob
        assert all(np.linalg.norm(np.subtract(a, b)) >= 8.0 for i, a in enumerate(sites) for b in sites[:i])
        if source.lesion_boxes_xyz:
            lo, hi = np.asarray(box[0]), np.asarray(box[1])
            assert all(np.linalg.norm(np.maximum(np.maximum(lo - s, s - hi), 0)) > 5.0 for s in sites)
