"""Corrected masks saved as training data: read back by load_dataset and the NAM slice sets."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from wsnodule_core.data.cases import make_phantom_case
from wsnodule_core.data.builders import build_dataset
from wsnodule_core.data.dataset import load_dataset
from wsnodule_core.data.user_cases import save_training_case
from wsnodule_core.errors import GeometryMismatchError, InvalidDatasetError, OutputExistsError
from wsnodule_core.data.slices import SliceConfig, slices_from_dataset


@pytest.fixture(scope="module")
def ct_and_mask():
    """A small phantom CT with two drawn nodules (one 2 slices, one 3 slices thick)."""
    case = make_phantom_case("p", seed=3, shape=(16, 64, 64), spacing=(5.0, 5.0, 5.0))
    lungs = np.argwhere(case.lungs)
    mask = np.zeros(case.image.shape, np.int32)
    zc, yc, xc = lungs[len(lungs) // 2]
    mask[zc : zc + 2, yc - 1 : yc + 2, xc - 1 : xc + 2] = 1
    zc2, yc2, xc2 = lungs[len(lungs) // 5]
    mask[zc2 : zc2 + 3, yc2 : yc2 + 2, xc2 : xc2 + 2] = 1  # same label value: a second nodule
    image = np.asarray(case.image.array).copy()
    image[mask > 0] = 30
    return case.image.with_array(image), case.image.with_array(mask), case.lungs


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_two_saved_cases_load_back_with_their_labels(tmp_path, ct_and_mask):
    image, mask, lungs = ct_and_mask
    folder = tmp_path / "mine"
    first = save_training_case(folder, image, mask, lungs=lungs)
    first_files = {p: _digest(p) for p in (first.image, first.mask, first.lungs, )}
    second = save_training_case(folder, image, mask, split="val")  # lungs segmented here
    assert (first.case_id, second.case_id) == ("user_001", "user_002")
    assert (first.n_nodules, second.n_cases) == (2, 2)
    assert all(_digest(p) == d for p, d in first_files.items())  # the first case is untouched

    dataset = load_dataset(folder)
    assert [e["case_id"] for e in dataset.entries()] == ["user_001", "user_002"]
    assert [e["case_id"] for e in dataset.entries("val")] == ["user_002"]
    info = json.loads((folder / "dataset.json").read_text())
    assert (info["numTraining"], info["numValidation"], info["numTest"]) == (1, 1, 0)
    assert info["training"] == [{"image": "images/user_001.nii.gz", "label": "labels/user_001.nii.gz"}]

    case = dataset.load_case(dataset.entries("train")[0])
    assert case.image.same_geometry(image)
    np.testing.assert_array_equal(case.image.array, image.array)
    np.testing.assert_array_equal(case.mask.array > 0, mask.array > 0)
    assert set(np.unique(case.mask.array)) == {0, 1, 2}  # one label per connected nodule
    assert len(case.nodules) == 2 and {n.placement for n in case.nodules} == {"user"}
    first_slices = sorted(n.slice_range for n in case.nodules)
    nodule_slices = np.flatnonzero((mask.array > 0).any(axis=(1, 2)))
    assert {z for lo, hi in first_slices for z in range(lo, hi + 1)} == set(nodule_slices)
    assert case.nodules[0].volume_mm3 == pytest.approx(np.count_nonzero(case.mask.array == 1) * 125.0)
    np.testing.assert_array_equal(case.lungs, lungs)

    slices = slices_from_dataset(folder, "train", SliceConfig(size=64))
    positive = set(slices.slice_index[slices.labels == 1].tolist())
    assert positive == set(nodule_slices.tolist())
    negative = slices.slice_index[slices.labels == 0]
    assert len(negative) > 0 and not set(negative.tolist()) & positive
    assert set(slices.case_ids.tolist()) == {"user_001"}
    assert (slices.masks[slices.labels == 1].reshape(len(positive), -1).max(axis=1) == 1).all()


def test_appending_keeps_a_built_data_set_as_it_was(tmp_path, ct_and_mask):
    image, mask, lungs = ct_and_mask
    folder = tmp_path / "built"
    build_dataset(folder, n_cases=2, size="tiny", shapes=[], nodules_per_case=(0, 0), seed=1)
    before = json.loads((folder / "dataset.json").read_text())
    files = {p: _digest(p) for p in folder.rglob("*.nii.gz")}
    saved = save_training_case(folder, image, mask, lungs=lungs, case_id="ward-7.scan1", split="test",
                               negatives_ok=False)
    after = json.loads((folder / "dataset.json").read_text())
    assert after["cases"][:2] == before["cases"] and after["parameters"] == before["parameters"]
    assert after["cases"][2]["case_id"] == "ward-7.scan1" and after["cases"][2]["negatives_ok"] is False
    assert after["numTest"] == before["numTest"] + 1 and saved.n_cases == 3
    assert all(_digest(p) == d for p, d in files.items())
    assert len(load_dataset(folder)) == 3
    # negatives_ok=False: only the nodule slices come out of this case
    slices = slices_from_dataset(folder, "test", SliceConfig(size=64))
    mine = slices.labels[slices.case_ids == "ward-7.scan1"]
    assert len(mine) > 0 and (mine == 1).all()


def test_wrong_inputs_are_refused_and_leave_nothing_behind(tmp_path, ct_and_mask):
    image, mask, lungs = ct_and_mask
    stranger = tmp_path / "photos"
    stranger.mkdir()
    (stranger / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(InvalidDatasetError, match="no dataset.json"):
        save_training_case(stranger, image, mask, lungs=lungs)
    folder = tmp_path / "set"
    save_training_case(folder, image, mask, lungs=lungs, case_id="a")
    with pytest.raises(OutputExistsError, match="already holds a case 'a'"):
        save_training_case(folder, image, mask, lungs=lungs, case_id="a")
    with pytest.raises(InvalidDatasetError, match="file name"):
        save_training_case(folder, image, mask, lungs=lungs, case_id="../b")
    with pytest.raises(InvalidDatasetError, match="split"):
        save_training_case(folder, image, mask, lungs=lungs, split="training")
    with pytest.raises(GeometryMismatchError):
        save_training_case(folder, image, mask.array[:-1], lungs=lungs)
    with pytest.raises(GeometryMismatchError):
        save_training_case(folder, image, mask, lungs=lungs[:, :-1])
    assert sorted(p.name for p in (folder / "images").iterdir()) == ["a.nii.gz"]
    assert [e["case_id"] for e in load_dataset(folder).entries()] == ["a"]
