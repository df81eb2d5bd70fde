"""The tiled NAM (nam.tiles): tile grid, whole-volume segmentation with a crop classifier, errors."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.errors import NamSegmentationError, SegmentationCancelled
from wsnodule_core.nam.pipeline import NamConfig, segment_volume
from wsnodule_core.nam.tile_grid import tile_origins

from .test_pipeline import SCOPE, blob_model, chest, dice


def test_tile_origins_cover_the_slice_and_keep_lung_centres():
    lungs = np.zeros((100, 90), bool)
    lungs[:, 45:] = True
    origins = tile_origins(lungs, 32, 16)
    assert origins[:, 0].max() == 100 - 32 and origins[:, 1].max() == 90 - 32  # flush with the far edges
    centres_x = origins[:, 1] + 16
    assert (centres_x >= 45).all()  # only tiles centred on lung
    everything = tile_origins(np.ones((100, 90), bool), 32, 16)
    assert len(everything) == 6 * 5 and len(origins) < len(everything)
    with pytest.raises(NamSegmentationError, match="input_size"):
        tile_origins(np.ones((20, 90), bool), 32, 16)


def test_tiled_segmentation_finds_two_nodules_in_their_own_tiles():
    volume, lungs, truth, _ = chest(nodules=((6, 36, 36), (6, 62, 80)), with_vessel=False)
    config = NamConfig(input_size=112, tile_size=40, tile_stride=16, scope=SCOPE, probability_threshold=0.5)
    seen = []
    result = segment_volume(blob_model(), volume, lungs=lungs, config=config, progress=lambda d, t: seen.append(d))
    assert seen[-1] == volume.shape[0]
    for vol in (result.fine, result.coarse, result.nam, result.scope, result.candidates):
        assert vol.same_geometry(volume)
    fine = result.fine.array > 0
    assert result.n_nodules == 2  # each nodule from the tiles that hold it, linked over slices
    assert dice(fine, truth) > 0.7
    assert not fine[:3].any() and not fine[10:].any()
    assert result.is_nodule[6] and not result.is_nodule[0]
    assert result.probability[6] > 0.9
    assert {s.z for s in result.slices} == set(np.flatnonzero(result.is_nodule))
    assert all(s.chosen for s in result.slices)


def test_tiled_segmentation_needs_lungs_and_can_be_cancelled():
    volume, lungs, _, _ = chest()
    config = NamConfig(input_size=112, tile_size=40, scope=SCOPE)
    with pytest.raises(NamSegmentationError, match="lung mask"):
        segment_volume(blob_model(), volume, lungs=None, config=config)
    with pytest.raises(SegmentationCancelled):
        segment_volume(blob_model(), volume, lungs=lungs, config=config, cancel=lambda: True)


@pytest.mark.parametrize("changes, match", [({"tile_size": 16}, "tile_size"), ({"tile_size": 200}, "tile_size"),
                                            ({"tile_size": 40, "tile_stride": 0}, "tile_stride")])
def test_tile_settings_are_checked(changes, match):
    with pytest.raises(NamSegmentationError, match=match):
        NamConfig(input_size=112, **changes)



def test_a_multi_gap_model_narrows_each_tile_s_scope_and_gives_its_map():
    volume, lungs, truth, _ = chest(nodules=((6, 36, 36), (6, 62, 80)), with_vessel=False)
    config = NamConfig(input_size=112, tile_size=40, tile_stride=16, scope=SCOPE)
    result = segment_volume(blob_model(), volume, lungs=lungs, config=config, multi_gap_model=blob_model(stride=(4, 8)))
    assert result.multi_nam is not None and result.multi_nam.same_geometry(volume)
    assert result.multi_nam.array[6].max() > 0 and result.multi_nam.array[0].max() == 0  # nodule tiles only
    assert result.n_nodules == 2 and dice(result.fine.array > 0, truth) > 0.6
