"""Hard negative tiles (nam.hard_tiles) on a synthetic nodule-free scan written to disk."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.data.nodule_free import NoduleFreeSource
from wsnodule_core.data.slices import SliceConfig
from wsnodule_core.errors import TrainingDataError
from wsnodule_core.io.writers import write_volume
from wsnodule_core.nam.hard_tiles import HardTileConfig, mine_hard_tiles

from .test_pipeline import blob_model, chest


@pytest.fixture(scope="module")
def scan_with_two_blobs(tmp_path_factory):
    """A chest phantom with two round blobs: one inside a known lesion box, one not."""
    volume, _, truth, _ = chest(nodules=((6, 36, 36), (6, 62, 80)), shape=(12, 112, 128), with_vessel=False)
    path = tmp_path_factory.mktemp("hard_tiles") / "scan.nii.gz"
    write_volume(volume, path)
    first = np.argwhere(truth[:, :70, :60])  # the first blob's voxels
    corners = volume.index_to_world(np.array([first.min(0) - 1, first.max(0) + 1], float))
    box = (tuple(corners.min(0)), tuple(corners.max(0)))
    return path, box, volume, truth


def test_the_classifier_s_false_positives_become_negatives_and_lesions_are_avoided(scan_with_two_blobs):
    path, box, _, truth = scan_with_two_blobs
    source = NoduleFreeSource("phantom", path, "train", lesion_boxes_xyz=(box,))
    config = SliceConfig(size=40, pixel_spacing_mm=0.75)
    mined = mine_hard_tiles(blob_model(), [source], config,
                            HardTileConfig(crop_size=112, stride=8, per_scan=3, random_per_scan=4, clearance_mm=2))
    assert len(mined) == mined.n_negative and 4 < len(mined) <= 7
    assert mined.images.shape[1:] == (40, 40) and mined.images.dtype == np.float16
    assert set(mined.case_ids) == {"hard-tile:phantom"}
    # the hard ones hold the unboxed blob (bright in the window) on its slices; none holds the boxed one
    hard = mined.images[:3].astype(np.float32)
    assert (hard.max(axis=(1, 2)) > 0.5).all() and set(mined.slice_index[:3]) <= set(np.flatnonzero(truth.any((1, 2))))
    unboxed = SliceConfig(size=40, pixel_spacing_mm=0.75)
    strict = HardTileConfig(crop_size=112, stride=8, per_scan=500, random_per_scan=0, separation_px=1,
                            clearance_mm=2, min_probability=0.99)
    everything = mine_hard_tiles(blob_model(), [NoduleFreeSource("phantom", path, "train")], unboxed, strict)
    avoided = mine_hard_tiles(blob_model(), [source], unboxed, strict)
    assert 0 < len(avoided) < len(everything)  # the boxed blob's tiles are never taken


def test_mining_needs_a_pixel_spacing_and_sane_counts(scan_with_two_blobs):
    path, *_ = scan_with_two_blobs
    with pytest.raises(TrainingDataError, match="pixel spacing"):
        mine_hard_tiles(blob_model(), [NoduleFreeSource("p", path, "train")], SliceConfig(size=40))
    with pytest.raises(TrainingDataError, match="per_scan"):
        HardTileConfig(per_scan=-1)
