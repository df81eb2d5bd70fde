"""Box prompts -> masks on the CT grid: a sphere in an anisotropic synthetic CT, caching, propagation,
and the prompts refused."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.errors import PromptError
from wsnodule_core.foundation import EmbeddingCache, check_box_zyx, segment_box, segment_slice_boxes
from wsnodule_core.io.volume import Volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SPACING = (2.5, 0.7, 0.7)


@pytest.fixture(scope="module")
def sphere():
    """A 7 mm-radius nodule of 30 HU in -850 HU lung with noise, slices 2.5 mm, pixels 0.7 mm."""
    shape = (9, 64, 64)
    z, y, x = np.indices(shape)
    d = np.sqrt(((z - 4) * SPACING[0]) ** 2 + ((y - 30) * SPACING[1]) ** 2 + ((x - 34) * SPACING[2]) ** 2)
    truth = d <= 7.0
    image = np.where(truth, 30.0, -850.0) + np.random.default_rng(0).normal(0, 25, shape)
    volume = Volume(image.astype(np.int16), spacing=SPACING, origin=(-20.0, 5.0, -100.0))
    return volume, truth


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def _box(truth: np.ndarray) -> tuple[int, ...]:
    idx = np.argwhere(truth)
    return (*idx.min(axis=0), *(idx.max(axis=0) + 1))


def test_a_box_segments_the_sphere_on_the_ct_grid_and_the_cache_changes_nothing(lite_medsam, sphere, tmp_path):
    volume, truth = sphere
    cache = EmbeddingCache(tmp_path)
    first = segment_box(volume, _box(truth), model=lite_medsam, cache=cache)
    again = segment_box(volume, _box(truth), model=lite_medsam, cache=cache)
    assert first.same_geometry(volume) and first.array.dtype == np.uint8
    mask = np.asarray(first.array) > 0
    assert _dice(mask, truth) > 0.8
    z0, _, _, z1, _, _ = _box(truth)
    assert not mask[:z0].any() and not mask[z1:].any()  # only the boxed slices
    assert np.array_equal(np.asarray(again.array), np.asarray(first.array))


def test_a_box_on_one_slice_is_carried_to_the_slices_the_sphere_reaches(lite_medsam, sphere):
    volume, truth = sphere
    rows, cols = np.nonzero(truth[4])
    box = (rows.min(), cols.min(), rows.max() + 1, cols.max() + 1)
    mask = np.asarray(segment_slice_boxes(volume, {4: box}, model=lite_medsam).array) > 0
    assert mask[3].any() and mask[5].any()  # carried beyond the prompted slice
    assert _dice(mask, truth) > 0.6


def test_bad_boxes_are_refused(sphere):
    volume, _ = sphere
    with pytest.raises(PromptError, match="six whole voxel indices"):
        check_box_zyx(volume, (0, 0, 0, 1, 1))
    with pytest.raises(PromptError, match="must exceed its start"):
        check_box_zyx(volume, (3, 0, 0, 3, 5, 5))
    with pytest.raises(PromptError, match="outside the CT's grid"):
        check_box_zyx(volume, (0, 0, 0, 10, 5, 5))
    with pytest.raises(PromptError, match="no box given"):
        segment_slice_boxes(volume, {}, model=object())
