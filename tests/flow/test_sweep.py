"""The guidance sweep ranks settings by mean Dice on validation patches."""

from __future__ import annotations

import numpy as np
import pytest
from torch import nn

from wsnodule_core.errors import ModelConfigError, SegmentationCancelled
from wsnodule_core.flow.attribution import ThresholdRule
from wsnodule_core.flow.guidance import GuidanceConfig
from wsnodule_core.flow.sweep import SweepGrid, sweep

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 16
CUBE = (slice(6, 10),) * 3


class GaussianField(nn.Module):
    """Exact velocity when every voxel of x0 is N(mu, s^2)."""

    def forward(self, x, t, mu=0.3, s=0.2):
        t = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        var = (1 - t) ** 2 * s ** 2 + t ** 2
        return mu + ((1 - t) * s ** 2 - t) / var * (x - (1 - t) * mu)


class CubePredictor(nn.Module):
    """logit = 20 (mean intensity in the central cube - 0.35)."""

    def forward(self, x):
        return 20 * (x[(slice(None), 0, *CUBE)].mean(dim=(1, 2, 3)) - 0.35)


def validation_set(n: int = 3):
    g = np.random.default_rng(0)
    images = (0.1 + 0.02 * g.standard_normal((n, SIZE, SIZE, SIZE))).astype(np.float32)
    masks = np.zeros(images.shape, bool)
    masks[(slice(None), *CUBE)] = True
    images[masks] += 0.5
    lungs = np.ones(images.shape, bool)
    return images, masks, lungs


BASE = GuidanceConfig(n_steps=12, method="heun", normalise="l2")
RULE = ThresholdRule("fraction", 0.5)


def test_the_sweep_ranks_a_scale_that_finds_the_cube_above_no_guidance():
    calls = []
    result = sweep(GaussianField(), CubePredictor(), validation_set(), SweepGrid(t0=(0.5,), guided_steps=(3,),
                   scale=(0.0, 1.0), rule=("x0", "dps")), BASE, mask_rule=RULE, floor=0.01, batch_size=2,
                   progress=lambda d, n: calls.append((d, n)))
    assert len(result.table) == 4
    assert [row["scale"] for row in result.table[:2]] == [1.0, 1.0]
    assert result.table[0]["dice_mean"] > 0.9
    for row in result.table[2:]:                       # no guidance: reconstruction error only, empty masks
        assert row["dice_mean"] == 0.0 and row["mask_voxels"] == 0
        assert row["p_after"] == pytest.approx(row["p_before"], abs=1e-3)
    assert result.table[0]["p_after"] < result.table[0]["p_before"]
    assert result.best.scale == 1.0 and result.best.n_steps == 12 and result.best.method == "heun"
    assert all(row["n"] == 3 for row in result.table)
    assert calls[-1] == (8, 8) and len(calls) == 8     # 4 settings x 2 batches


def test_the_sweep_prefers_enough_guided_steps():
    result = sweep(GaussianField(), CubePredictor(), validation_set(2),
                   SweepGrid(t0=(0.5,), guided_steps=(0, 4), scale=(1.0,), rule=("x0",)),
                   BASE, mask_rule=RULE, floor=0.01)
    assert result.best.guided_steps == 4
    assert result.table[0]["dice_mean"] > result.table[1]["dice_mean"]


def test_sweep_cancel_and_validation():
    data = validation_set(2)
    with pytest.raises(SegmentationCancelled):
        sweep(GaussianField(), CubePredictor(), data, SweepGrid(t0=(0.5,), guided_steps=(1,), scale=(1.0,),
              rule=("x0",)), BASE, cancel=lambda: True)
    with pytest.raises(ModelConfigError):  # K beyond n_steps
        sweep(GaussianField(), CubePredictor(), data, SweepGrid(guided_steps=(50,)), BASE)
    with pytest.raises(ModelConfigError):
        SweepGrid(scale=())
    with pytest.raises(ModelConfigError):
        sweep(GaussianField(), CubePredictor(), (data[0], data[1][:, :4]), SweepGrid(), BASE)


def test_a_patch_set_gives_its_nodule_patches():
    from wsnodule_core.flow.patches import PatchConfig, PatchSet

    images, masks, lungs = validation_set(3)
    images[2] = 0.1                                    # a negative patch: no nodule, excluded
    masks[2] = False
    labels = np.array([1, 1, 0], np.int8)
    patches = PatchSet(images.astype(np.float16), labels, masks.astype(np.uint16), lungs,
                       np.array([1, 1, 0], np.int32), np.array(["a", "a", "b"], object), np.zeros((3, 3)),
                       np.tile(np.eye(3), (3, 1, 1)), np.zeros((3, 3)), PatchConfig(size=SIZE))
    result = sweep(GaussianField(), CubePredictor(), patches, SweepGrid(t0=(0.5,), guided_steps=(3,),
                   scale=(1.0,), rule=("x0",)), BASE, mask_rule=RULE, floor=0.01)
    assert result.table[0]["n"] == 2 and result.table[0]["dice_mean"] > 0.9
