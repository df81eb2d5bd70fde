"""Flow guidance on a CT (flow/on_volume.py): the patch protocol, centres inside the CT, patches cut at the
points, the mask from the HU difference, the CT-grid mask and difference (union, geometry kept), progress and
cancel."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.errors import FlowProtocolError, PatchCentreError
from wsnodule_core.flow.attribution import ThresholdRule
from wsnodule_core.flow.guidance import GuidanceConfig, difference_mask
from wsnodule_core.flow.on_volume import (
    check_inside,
    cut_patch,
    guide_at_points,
    paste_on_grid,
    patch_protocol,
)
from wsnodule_core.flow.patches import PatchConfig
from wsnodule_core.flow.predictors import PredictorConfig, build_predictor
from wsnodule_core.flow.rectified_flow import SamplingCancelled
from wsnodule_core.flow.train_prior import PriorTrainConfig, build_prior_model
from wsnodule_core.flow.velocity import VelocityConfig
from wsnodule_core.io.volume import Volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE, SPACING_MM = 16, 2.0
TINY = VelocityConfig(channels=(8, 16, 32), num_head_channels=8, patch_size=SIZE)
CT_SPACING = (2.0, 1.0, 1.2)
FLIPS = np.diag([-1.0, 1.0, -1.0])


@pytest.fixture(scope="module")
def models():
    config = PriorTrainConfig(model=TINY, spacing_mm=SPACING_MM, device="cpu", seed=3)
    predictor = build_predictor(PredictorConfig(channels=(4, 8)), seed=1).eval()
    return build_prior_model(config).eval(), config, predictor


def chest(shape=(24, 40, 40)) -> Volume:
    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(shape, CT_SPACING)), indexing="ij")
    hu = -850 + 3.0 * z - 2.0 * y + 1.5 * x
    hu[(z - 24) ** 2 + (y - 20) ** 2 + (x - 24) ** 2 <= 36] = 30
    return Volume(hu.astype(np.float32), CT_SPACING, (10.0, -20.0, 30.0), FLIPS)


def test_patch_protocol_is_the_priors_and_mismatches_say_what_to_load(models):
    _, prior_config, _ = models
    assert patch_protocol(prior_config, None) == (SIZE, SPACING_MM)
    assert patch_protocol(prior_config, PatchConfig(size=SIZE, spacing_mm=SPACING_MM)) == (SIZE, SPACING_MM)
    with pytest.raises(FlowProtocolError, match="trained on 32³.*PatchConfig\\(size=16"):
        patch_protocol(prior_config, PatchConfig(size=32, spacing_mm=SPACING_MM))
    with pytest.raises(FlowProtocolError, match="at 1.5 mm"):
        patch_protocol(prior_config, PatchConfig(size=SIZE, spacing_mm=1.5))


def test_centres_outside_the_ct_are_refused():
    volume = chest()
    inside = volume.index_to_world((12.0, 20.0, 20.0))
    check_inside(volume, inside[None], "ct")
    outside = volume.index_to_world((12.0, 20.0, 60.0))
    with pytest.raises(PatchCentreError, match="point 2 .* outside 'ct'"):
        check_inside(volume, np.stack([inside, outside]), "ct")


def test_guidance_at_points_matches_its_parts_and_pastes_onto_the_ct(models):
    prior, prior_config, predictor = models
    volume = chest()
    indices = np.array([[12.0, 20.0, 20.0], [8.0, 14.0, 25.0]])
    centres = volume.index_to_world(indices)
    config = GuidanceConfig(n_steps=4, guided_steps=2, scale=3.0, clamp=(0.0, 1.0))
    rule = ThresholdRule("otsu")
    ticks: list[tuple[int, int]] = []
    result = guide_at_points(volume, centres, prior, predictor, config, rule, prior_config=prior_config,
                             floor_hu=20.0, progress=lambda done, total: ticks.append((done, total)))
    assert ticks and ticks[-1][0] == ticks[-1][1]
    assert len(result.patches) == 2 and result.masks.shape == (2, SIZE, SIZE, SIZE)
    assert result.trajectory.shape == (2, 5, SIZE, SIZE, SIZE) and result.times[-1] == 0.0
    for i, patch in enumerate(result.patches):
        expected = cut_patch(volume, centres[i], SIZE, SPACING_MM)
        assert patch.same_geometry(expected) and np.array_equal(patch.array, expected.array)
        np.testing.assert_allclose(patch.index_to_world([SIZE // 2] * 3), centres[i], atol=1e-6)
        np.testing.assert_allclose(result.difference[i], np.abs(np.clip(patch.array, -1000, 1000)
                                                                 - result.counterfactual[i]), atol=0.5)
    # the mask is the rule on the HU difference after the floor (the rules are scale-invariant)
    np.testing.assert_array_equal(result.masks, difference_mask(result.difference, None, rule, floor=20.0))
    assert result.masks.any()

    # the CT-grid maps have the CT's geometry; each CT voxel in the mask has its nearest patch voxel in a
    # patch mask
    assert result.mask.same_geometry(volume) and result.difference_map.same_geometry(volume)
    assert result.mask.array.dtype == np.uint8 and result.difference_map.array.dtype == np.float32
    on_ct = np.argwhere(result.mask.array > 0)
    assert len(on_ct)
    world = volume.index_to_world(on_ct.astype(float))
    hits = np.zeros(len(on_ct), bool)
    for i, patch in enumerate(result.patches):
        index = np.floor(patch.world_to_index(world) + 0.5 + 1e-6).astype(int)  # ITK rounds ties up
        ok = np.all((index >= 0) & (index < SIZE), axis=1)
        hits[ok] |= result.masks[i][tuple(index[ok].T)]
    assert hits.all()
    # the patch centres are CT voxel centres: the difference there is the patch's own value
    assert result.difference_map.array[12, 20, 20] == pytest.approx(
        max(result.difference[0][8, 8, 8], _value_at(result, 1, volume, (12, 20, 20))), abs=1e-3)
    assert result.difference_map.array[0, 39, 0] == 0.0  # outside every patch


def _value_at(result, i, volume, index):
    p = result.patches[i].world_to_index(volume.index_to_world(np.asarray(index, float)))
    if np.any(p < 0) or np.any(p > SIZE - 1):
        return 0.0
    from scipy.ndimage import map_coordinates

    return float(map_coordinates(result.difference[i], p[:, None], order=1)[0])


def test_a_later_patch_does_not_erase_an_earlier_one():
    volume = chest()
    first, second = (cut_patch(volume, volume.index_to_world(c), 8, 2.0) for c in ((12.0, 20.0, 20.0),
                                                                                  (12.0, 22.0, 22.0)))
    full = first.with_array(np.ones(first.shape, np.uint8))
    empty = second.with_array(np.zeros(second.shape, np.uint8))
    alone = paste_on_grid([full], volume, interpolator="nearest", combine=np.maximum, dtype=np.uint8)
    both = paste_on_grid([full, empty], volume, interpolator="nearest", combine=np.maximum, dtype=np.uint8)
    assert alone.array.sum() > 0 and np.array_equal(alone.array, both.array)
    # the pasted box is the patch's extent: 8 voxels of 2 mm = 16 mm along each axis
    extent = np.ptp(np.argwhere(alone.array), axis=0) + 1
    np.testing.assert_allclose(extent * np.asarray(volume.spacing), 16.0, atol=2.5)


def test_cancel_stops_before_the_work(models):
    prior, prior_config, predictor = models
    volume = chest()
    with pytest.raises(SamplingCancelled):
        guide_at_points(volume, volume.index_to_world((12.0, 20.0, 20.0))[None], prior, predictor,
                        GuidanceConfig(n_steps=4, guided_steps=2, clamp=(0.0, 1.0)), ThresholdRule(),
                        prior_config=prior_config, cancel=lambda: True)
