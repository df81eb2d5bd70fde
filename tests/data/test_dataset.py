"""Cases (slice and patch labels), phantom and hybrid data sets: splits, files, determinism, loading."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from wsnodule_core.data.cases import Case, make_phantom_case
from wsnodule_core.data.builders import build_dataset
from wsnodule_core.data.builders.splits import partition_shapes, split_subjects
from wsnodule_core.data.dataset import SPLITS, load_dataset
from wsnodule_core.data.insertion import NoduleRecord
from wsnodule_core.data.nodule_shape import NoduleShape
from wsnodule_core.errors import InvalidDatasetError, OutputExistsError
from wsnodule_core.io.volume import Volume

TINY = dict(shape=(24, 96, 96), spacing=(5.0, 3.6, 3.6))


def sphere_shape(radius_mm, patient, ident, rating=5.0):
    sp = np.array([1.25, 0.7, 0.7])
    half = np.ceil(radius_mm / sp).astype(int) + 1
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, sp)], indexing="ij")
    mask = sum(g ** 2 for g in grids) <= radius_mm ** 2
    return NoduleShape(mask, tuple(sp), 2 * radius_mm, float(mask.sum() * sp.prod()), rating, (ident,), patient)


@pytest.fixture(scope="module")
def shapes():
    rng = np.random.default_rng(0)
    return [sphere_shape(float(rng.uniform(5.0, 12.0)), f"LIDC-IDRI-{i // 2:04d}", 100 + i,
                         rating=float(rng.choice([1, 3, 5]))) for i in range(24)]


def record(label, centre, zs):
    return NoduleRecord(label, centre, (0.0, 0.0, 0.0), 6.0, 100.0, 100.0, "solid", 5.0, "isolated", (1,),
                        "lidc-1", "p", zs)


def hand_case():
    """A 10 x 40 x 40 case with a 3 x 3 nodule on slices 4-5 and a single voxel on slice 6."""
    mask = np.zeros((10, 40, 40), np.uint16)
    mask[4:6, 19:22, 19:22] = 1
    mask[6, 20, 20] = 1
    image = Volume(np.full(mask.shape, -800, np.int16), (2.0, 1.0, 1.0))
    lungs = np.zeros(mask.shape, bool)
    lungs[:, 5:35, 5:35] = True
    return Case("hand", image, image.with_array(mask), lungs, [record(1, (5.0, 20.0, 20.0), (4, 6))], "test")


def test_slice_labels_with_and_without_the_nam_minimum_area():
    case = hand_case()
    np.testing.assert_array_equal(case.slice_labels(), [0, 0, 0, 0, 1, 1, 1, 0, 0, 0])
    # 9 mm2 on slices 4-5, 1 mm2 on slice 6
    np.testing.assert_array_equal(case.slice_labels(min_area_mm2=5.0), [0, 0, 0, 0, 1, 1, 0, 0, 0, 0])


def test_patch_labels_mark_the_patch_holding_the_nodule_centre():
    case = hand_case()
    patches = case.patch_labels(patch_size_mm=10.0, stride_mm=(4.0, 5.0, 5.0))
    # windows of 5 x 10 x 10 voxels, z starts 0, 2, 4 (+5 to reach the end), y/x starts 0, 5, ..., 30;
    # the central half of a window starting at s spans s + 2 .. s + 7 in y/x and s + 0.75 .. s + 3.25 in z,
    # so only z starts 2 and 4 with y/x start 15 hold the nodule centre (5, 20, 20)
    positives = sorted(p.start for p in patches if p.label == 1)
    assert positives == [(2, 15, 15), (4, 15, 15)]
    assert all(p.size == (5, 10, 10) for p in patches)
    for p in patches:
        if p.label == 0:
            assert not case.mask.array[p.region].any()
    extracted = case.extract_patches(patch_size_mm=10.0, stride_mm=10.0, n_negative=2, seed=0)
    assert extracted.images.shape == (3, 5, 10, 10) and list(extracted.labels) == [1, 0, 0]
    assert extracted.images[0].dtype == np.float32


def test_no_negative_patches_from_a_case_with_an_unlabelled_lesion():
    case = hand_case()
    flagged = Case(case.case_id, case.image, case.mask, case.lungs, case.nodules, "hybrid:x", negatives_ok=False)
    assert list(flagged.extract_patches(10.0, n_negative=5).labels) == [1]


def test_shapes_are_partitioned_by_patient(shapes):
    pools = partition_shapes(shapes, (4, 1, 1), np.random.default_rng(0))
    patients = [{s.patient_id for s in pool} for pool in pools]
    assert all(patients) and not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert sum(len(p) for p in pools) == len(shapes)
    assert len(pools[0]) == 16 and len(pools[1]) == 4 and len(pools[2]) == 4  # 24 shapes, 4:1:1


def test_subject_split_is_4_1_1_in_each_stratum():
    subjects = [f"s{i}" for i in range(12)]
    strata = {s: "a" if i < 6 else "b" for i, s in enumerate(subjects)}
    split = split_subjects(subjects, strata, (4, 1, 1), np.random.default_rng(1))
    for group in ("a", "b"):
        names = [split[s] for s in subjects if strata[s] == group]
        assert (names.count("train"), names.count("val"), names.count("test")) == (4, 1, 1)
    two = split_subjects(["ct1", "ct2"], {}, (4, 1, 1), np.random.default_rng(0))
    assert sorted(two.values()) == ["test", "train"]


def test_phantom_case_has_nodules_inside_its_lungs(shapes):
    case = make_phantom_case("c0", seed=1, shapes=shapes[:3], **TINY)
    assert case.image.shape == TINY["shape"] and case.mask.array.dtype == np.uint16
    labels = sorted(int(v) for v in np.unique(case.mask.array) if v)
    assert labels == [n.label for n in case.nodules] and len(case.nodules) + len(case.notes) == 3
    for n in case.nodules:
        assert case.lungs[tuple(int(round(c)) for c in n.centre_zyx)]


def _checksums(folder: Path) -> dict:
    from wsnodule_core.io.readers import read_volume

    return {p.relative_to(folder).as_posix(): hashlib.sha256(np.ascontiguousarray(read_volume(p).array)).hexdigest()
            for p in sorted(folder.rglob("*.nii.gz"))}


@pytest.mark.slow
def test_phantom_dataset_build_is_split_deterministic_and_loads(tmp_path, shapes):
    calls = []
    kwargs = dict(source="phantom", n_cases=6, seed=5, shapes=shapes, nodules_per_case=(0, 2),
                  progress=lambda d, t: calls.append((d, t)), **TINY)
    info = build_dataset(tmp_path / "a", **kwargs)
    assert calls[-1] == (6, 6) and info.split_counts == {"train": 4, "val": 1, "test": 1}
    doc = json.loads(info.json_path.read_text())
    assert doc["modality"] == {"0": "CT"} and doc["labels"] == {"0": "background", "1": "nodule"}
    assert doc["numTraining"] == 4 and doc["parameters"]["seed"] == 5 and doc["wsnodule_version"]
    shape_patients = {s.shape_id: s.patient_id for s in shapes}
    patients_by_split = {s: set() for s in SPLITS}
    for entry in doc["cases"]:
        for key in ("image", "mask", "lungs"):
            assert (tmp_path / "a" / entry[key]).exists()
        for n in entry["nodules"]:
            patients_by_split[entry["split"]].add(shape_patients[n["shape_id"]])
            assert set(n) >= {"diameter_mm", "texture", "placement", "lidc_annotation_ids", "centre_xyz"}
    splits = list(patients_by_split.values())
    assert not (splits[0] & splits[1] or splits[0] & splits[2] or splits[1] & splits[2])

    # deterministic: a second build writes identical arrays
    build_dataset(tmp_path / "b", **kwargs)
    assert _checksums(tmp_path / "a") == _checksums(tmp_path / "b")
    assert json.loads((tmp_path / "b" / "dataset.json").read_text())["cases"] == doc["cases"]

    # MONAI reads the MSD-style lists with absolute paths
    from monai.data import load_decathlon_datalist

    training = load_decathlon_datalist(str(info.json_path), data_list_key="training")
    assert len(training) == 4 and all(Path(item["label"]).exists() for item in training)

    data = load_dataset(tmp_path / "a")
    test_cases = list(data.cases("test"))
    assert len(test_cases) == 1 and len(data) == 6
    for entry, case in zip(data.entries(), data.cases()):
        np.testing.assert_array_equal(case.slice_labels(), entry["slice_labels"])
        assert [n.label for n in case.nodules] == sorted(int(v) for v in np.unique(case.mask.array) if v)
        assert case.lungs.dtype == bool and case.lungs.any()


def test_build_refuses_a_non_empty_folder(tmp_path, shapes):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(OutputExistsError, match="not empty"):
        build_dataset(tmp_path, n_cases=1, shapes=shapes, **TINY)
    info = build_dataset(tmp_path, n_cases=1, shapes=shapes, overwrite=True, **TINY)
    assert info.n_cases == 1 and (tmp_path / "mine.txt").read_text() == "keep me"


def test_build_can_be_cancelled(tmp_path, shapes):
    from wsnodule_core.errors import BuildCancelled

    with pytest.raises(BuildCancelled, match="cancelled after 0 case"):
        build_dataset(tmp_path / "c", n_cases=3, shapes=shapes, cancel=lambda: True, **TINY)
    assert not (tmp_path / "c" / "dataset.json").exists()


def test_load_dataset_reports_what_is_wrong(tmp_path):
    with pytest.raises(InvalidDatasetError, match="no dataset.json"):
        load_dataset(tmp_path)
    path = tmp_path / "dataset.json"
    path.write_text("{not json")
    with pytest.raises(InvalidDatasetError, match="not valid JSON"):
        load_dataset(tmp_path)
    path.write_text(json.dumps({"name": "x", "format_version": 99, "modality": {}, "labels": {}, "cases": []}))
    with pytest.raises(InvalidDatasetError, match="version 99"):
        load_dataset(tmp_path)
    path.write_text(json.dumps({"name": "x", "format_version": 1}))
    with pytest.raises(InvalidDatasetError, match="cases"):
        load_dataset(tmp_path)
    path.write_text(json.dumps({"name": "x", "format_version": 1, "modality": {}, "labels": {},
                                "cases": [{"case_id": "a", "image": "images/a.nii.gz", "mask": "labels/a.nii.gz",
                                           "split": "train", "subject": "a", "nodules": []}]}))
    data = load_dataset(tmp_path)
    with pytest.raises(InvalidDatasetError, match="missing"):
        next(data.cases())


def _real_cts():
    root = os.environ.get("WSNODULE_DATA")
    if not root:
        pytest.skip("WSNODULE_DATA is not set: the real chest CT series are needed for hybrid cases")
    paths = sorted(p for p in (Path(root) / "chest-ct").iterdir() if p.is_dir())
    if not paths:
        pytest.skip(f"no CT series in {root}/chest-ct")
    return paths


@pytest.mark.slow
def test_hybrid_dataset_keeps_each_real_series_in_one_split(tmp_path, shapes):
    paths = _real_cts()
    info = build_dataset(tmp_path, source="hybrid", ct_paths=paths, n_cases=4, seed=0, shapes=shapes,
                         spacing=(5.0, 3.0, 3.0), nodules_per_case=(1, 2))
    doc = json.loads(info.json_path.read_text())
    split_of = {}
    for entry in doc["cases"]:
        assert split_of.setdefault(entry["subject"], entry["split"]) == entry["split"]
        assert entry["source"] == f"hybrid:{entry['subject']}"
        assert entry["spacing"] == [5.0, 3.0, 3.0]
        if entry["subject"] == "tcga-34-2605":
            assert entry["negatives_ok"] is False and "mass" in entry["notes"][0]
    assert len(set(split_of.values())) == len(paths)
    case = next(load_dataset(tmp_path).cases())
    assert len(case.nodules) >= 1 and (case.mask.array > 0).sum() > 0
