"""Flow patch sets: geometry kept per patch, labels, nodule and lung crops, window, data-set loop."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.data.cases import Case
from wsnodule_core.data.insertion import NoduleRecord
from wsnodule_core.errors import ModelConfigError, SegmentationCancelled
from wsnodule_core.flow.patches import PatchConfig, PatchSet, case_patches, patches_from_dataset
from wsnodule_core.image.window import FLOW_WINDOW, apply_window, invert_window
from wsnodule_core.io.volume import Volume

SPACING = (2.5, 1.2, 1.2)
CENTRE_ZYX = (20.0, 30.0, 34.0)


def make_case(case_id: str = "c1", direction=np.diag([-1.0, 1.0, 1.0]), negatives_ok: bool = True) -> Case:
    """An anisotropic, x-flipped CT: a lung box at -850 HU, tissue at 40 HU, one 10 mm sphere at 0 HU."""
    shape = (40, 64, 64)
    z, y, x = np.indices(shape)
    lungs = (z > 3) & (z < 36) & (y > 6) & (y < 58) & (x > 6) & (x < 58)
    distance = np.sqrt(sum(((i - c) * s) ** 2 for i, c, s in zip((z, y, x), CENTRE_ZYX, SPACING)))
    nodule = distance <= 5.0
    hu = np.where(lungs, -850, 40).astype(np.int16)
    hu[nodule] = 0
    image = Volume(hu, SPACING, (30.0, -20.0, -100.0), direction)
    record = NoduleRecord(1, CENTRE_ZYX, tuple(image.index_to_world(CENTRE_ZYX)), 10.0, 520.0, 520.0, "solid",
                          5.0, "isolated", (), "s1", "p1", (16, 24))
    return Case(case_id, image, image.with_array(nodule.astype(np.uint16)), lungs, [record], "phantom",
                negatives_ok)


CONFIG = PatchConfig(size=16, spacing_mm=1.5, positives_per_nodule=3, negatives_per_case=4, seed=3)


@pytest.fixture(scope="module")
def case() -> Case:
    return make_case()


@pytest.fixture(scope="module")
def patches(case) -> PatchSet:
    return case_patches(case, CONFIG)


def test_counts_shapes_and_dtypes(patches):
    assert (patches.n_positive, patches.n_negative) == (3, 4)
    assert patches.images.shape == patches.masks.shape == patches.lungs.shape == (7, 16, 16, 16)
    assert patches.images.dtype == np.float16 and patches.lungs.dtype == bool
    assert 0.0 <= patches.images.min() and patches.images.max() <= 1.0
    assert set(patches.case_ids) == {"c1"}


def test_a_world_point_maps_to_the_same_voxel_in_patch_and_case(case, patches):
    rng = np.random.default_rng(0)
    for i in range(len(patches)):
        mask = patches.volume(i, "mask")
        lungs = patches.volume(i, "lungs")
        assert mask.spacing == (1.5, 1.5, 1.5)
        assert np.allclose(mask.direction, case.image.direction)
        assert np.allclose(mask.index_to_world([8, 8, 8]), patches.centres_xyz[i], atol=1e-6)
        index = rng.integers(0, 16, (300, 3))
        world = mask.index_to_world(index.astype(float))
        in_case = np.round(case.mask.world_to_index(world)).astype(int)
        inside = np.all((in_case >= 0) & (in_case < case.image.shape), axis=1)
        case_values = np.asarray(case.mask.array)[tuple(in_case[inside].T)]
        patch_values = np.asarray(mask.array)[tuple(index[inside].T)]
        # nearest-neighbour resampling: the same voxel, but for rounding ties exactly between two voxels
        assert np.mean(case_values == patch_values) > 0.97
        case_lungs = case.lungs[tuple(in_case[inside].T)]
        assert np.mean(case_lungs == (np.asarray(lungs.array)[tuple(index[inside].T)] > 0)) > 0.97


def test_positives_contain_their_nodule_and_negatives_none(case, patches):
    centre_xyz = case.nodules[0].centre_xyz
    for i in np.flatnonzero(patches.labels == 1):
        assert patches.nodule_labels[i] == 1
        volume = patches.volume(i, "mask")
        index = np.round(volume.world_to_index(centre_xyz)).astype(int)
        assert np.all(np.abs(index - 8) <= 4)  # the nodule centre lies in the central half
        assert volume.array[tuple(index)] == 1
        # HU 0 at the nodule centre -> 0.5 in the [-1000, 1000] window
        assert abs(float(patches.images[i][tuple(index)]) - 0.5) < 0.02
        assert patches.nodule_masks[i].sum() > 100  # most of a 10 mm sphere (about 155 voxels at 1.5 mm)
    jittered = patches.centres_xyz[patches.labels == 1]
    assert len({tuple(np.round(c, 3)) for c in jittered}) == 3
    for i in np.flatnonzero(patches.labels == 0):
        assert patches.nodule_labels[i] == 0 and not patches.nodule_masks[i].any()
        assert patches.lungs[i][8, 8, 8]  # centred on a lung voxel
        assert abs(float(patches.images[i][8, 8, 8]) - apply_window(-850.0, FLOW_WINDOW)) < 0.02


def test_no_negatives_from_cases_that_may_hide_lesions():
    patches = case_patches(make_case(negatives_ok=False), CONFIG)
    assert patches.n_negative == 0 and patches.n_positive == 3


def test_same_seed_same_patches_and_subset_concatenate(case, patches):
    again = case_patches(case, CONFIG)
    assert np.array_equal(again.images, patches.images)
    assert np.allclose(again.centres_xyz, patches.centres_xyz)
    joined = PatchSet.concatenate([patches.subset([0, 1]), patches.subset(patches.labels == 0)], CONFIG)
    assert len(joined) == 6 and joined.n_negative == 4
    assert np.array_equal(joined.masks[0], patches.masks[0])
    assert np.allclose(joined.volume(5, "image").origin, patches.volume(6, "image").origin)


def test_window_and_its_inverse():
    hu = np.array([-1200.0, -1000.0, 0.0, 500.0, 1000.0, 3000.0])
    values = apply_window(hu, FLOW_WINDOW)
    assert np.allclose(values, [0, 0, 0.5, 0.75, 1, 1])
    assert np.allclose(invert_window(values, FLOW_WINDOW), [-1000, -1000, 0, 500, 1000, 1000])


def test_config_defaults_and_validation():
    default = PatchConfig()
    assert (default.size, default.spacing_mm, default.window) == (32, 1.5, (-1000.0, 1000.0))
    gpu = PatchConfig.for_device("cuda")
    assert (gpu.size, gpu.spacing_mm) == (64, 1.0)
    with pytest.raises(ModelConfigError, match="jitter_fraction"):
        PatchConfig(jitter_fraction=0.5)
    with pytest.raises(ModelConfigError, match="size"):
        PatchConfig(size=2)
    with pytest.raises(ModelConfigError, match="window"):
        PatchConfig(window=(100, -100))


class _FakeDataset:
    """What patches_from_dataset needs of a Dataset: entries(split) and load_case(entry)."""

    def entries(self, split):
        return [{"case_id": "a"}, {"case_id": "b"}] if split == "train" else []

    def load_case(self, entry):
        return make_case(entry["case_id"])


def test_patches_from_dataset_joins_cases_reports_progress_and_cancels():
    seen = []
    patches = patches_from_dataset(_FakeDataset(), "train", CONFIG, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 2), (2, 2)]
    assert len(patches) == 14 and set(patches.case_ids) == {"a", "b"}
    assert len(patches_from_dataset(_FakeDataset(), "val", CONFIG)) == 0
    with pytest.raises(SegmentationCancelled):
        patches_from_dataset(_FakeDataset(), "train", CONFIG, cancel=lambda: True)
