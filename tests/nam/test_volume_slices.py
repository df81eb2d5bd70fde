import numpy as np
import pytest

from wsnodule_core.data.dataset import load_dataset
from wsnodule_core.errors import GeometryMismatchError, TrainingDataError
from wsnodule_core.data.slices import SliceConfig
from wsnodule_core.nam.volume_slices import volume_training_slices

CONFIG = SliceConfig(size=64, pixel_spacing_mm=4.4)


@pytest.fixture(scope="module")
def case_with_nodules(phantom_dataset):
    dataset = load_dataset(phantom_dataset)
    for entry in dataset.entries():
        case = dataset.load_case(entry)
        if np.count_nonzero(case.mask.array) and len(np.unique(np.flatnonzero(case.mask.array.any((1, 2))))) >= 4:
            return case
    pytest.skip("the tiny phantom set has no case with nodules on 4 slices or more")


def test_slices_of_a_painted_volume_are_split_by_class(case_with_nodules):
    case = case_with_nodules
    train, val = volume_training_slices(case.image, case.mask, CONFIG, seed=3)  # lungs segmented here
    nodule_slices = set(np.flatnonzero(case.mask.array.any((1, 2))).tolist())
    assert val is not None and train.n_positive > 0 and train.n_negative > 0 and val.n_negative > 0
    everything = np.concatenate([train.slice_index, val.slice_index])
    assert len(set(everything.tolist())) == len(everything)  # no slice in both
    positives = np.concatenate([train.slice_index[train.labels == 1], val.slice_index[val.labels == 1]])
    assert set(positives.tolist()) == nodule_slices
    assert train.images.shape[1:] == (64, 64) and 0.1 < len(val) / len(everything) < 0.3


def test_an_empty_mask_a_wrong_shape_or_too_small_nodules_are_refused(case_with_nodules):
    case = case_with_nodules
    with pytest.raises(TrainingDataError, match="no labelled voxel"):
        volume_training_slices(case.image, np.zeros(case.image.shape, np.uint8), CONFIG, lungs=case.lungs)
    with pytest.raises(GeometryMismatchError, match="shape"):
        volume_training_slices(case.image, case.mask.array[:-1], CONFIG, lungs=case.lungs)
    huge = SliceConfig(size=64, pixel_spacing_mm=4.4, min_nodule_area_mm2=1e6)
    with pytest.raises(TrainingDataError, match="minimum nodule area"):
        volume_training_slices(case.image, case.mask, huge, lungs=case.lungs)


def test_every_slice_with_a_nodule_leaves_no_negative(case_with_nodules):
    case = case_with_nodules
    full = np.ones(case.image.shape, np.uint8)
    with pytest.raises(TrainingDataError, match="no negative slice"):
        volume_training_slices(case.image, full, CONFIG, lungs=case.lungs)
