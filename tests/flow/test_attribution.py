"""Attribution baselines (CAM, Grad-CAM, Grad-CAM++, occlusion) and the shared threshold rules."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from wsnodule_core.errors import ModelConfigError, SegmentationCancelled
from wsnodule_core.flow.attribution import (METHODS, AttributionConfig, Attributor, ThresholdRule,
                                            attribution_maps, mask_from_map)
from wsnodule_core.flow.patches import PatchConfig, PatchSet
from wsnodule_core.flow.predictors import (PredictorConfig, PredictorTrainConfig,
                                           build_predictor, train_predictor)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 20
REGION = (slice(3, 9), slice(10, 16), slice(4, 10))

CNN_ARCHITECTURES = ("cnn3d", "ortho25d")  # tinyvit25d (LiteMedSAM): tests/flow/test_tinyvit_predictor.py


class RegionModel(nn.Module):
    """logit = mean over the patch of (x inside REGION): the evidence lies in REGION only."""

    cam_layer = "features"
    fc_layer = "fc"

    def __init__(self) -> None:
        super().__init__()
        region = torch.zeros(1, 1, SIZE, SIZE, SIZE)
        region[(0, 0, *REGION)] = 1
        self.register_buffer("region", region)
        self.gain = nn.Parameter(torch.ones(1))
        self.features = nn.Identity()
        self.fc = nn.Linear(1, 1)
        with torch.no_grad():
            self.fc.weight.fill_(1.0)
            self.fc.bias.zero_()

    def forward(self, x):
        return self.fc(self.features(x * self.region * self.gain).mean(dim=(2, 3, 4)))


def sphere_patches(n: int, size: int = 16, seed: int = 0) -> PatchSet:
    """``n`` noisy cubes, every second one with a bright sphere near the centre (as in test_predictors)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices((size,) * 3)
    images = (0.1 + 0.03 * rng.standard_normal((n, size, size, size))).clip(0, 1)
    masks = np.zeros((n, size, size, size), np.uint16)
    labels = (np.arange(n) % 2).astype(np.int8)
    for i in np.flatnonzero(labels):
        c = rng.integers(size // 2 - 2, size // 2 + 2, 3)
        ball = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= rng.integers(2, 4) ** 2
        images[i][ball] = 0.55
        masks[i][ball] = 1
    return PatchSet(images.astype(np.float16), labels, masks, np.ones((n, size, size, size), bool),
                    labels.astype(np.int32), np.array([f"c{i}" for i in range(n)], dtype=object),
                    np.zeros((n, 3)), np.tile(np.eye(3), (n, 1, 1)), np.zeros((n, 3)), PatchConfig(size=size))


def _inside() -> np.ndarray:
    inside = np.zeros((SIZE,) * 3, bool)
    inside[REGION] = True
    return inside


@pytest.mark.parametrize("method", METHODS)
def test_maps_peak_in_the_region_the_logit_depends_on(method):
    torch.manual_seed(0)
    x = 0.2 + 0.8 * torch.rand(3, SIZE, SIZE, SIZE)
    maps = attribution_maps(RegionModel(), x, AttributionConfig(method, occlusion_size=4, occlusion_stride=2))
    inside = _inside()
    assert maps.shape == (3, SIZE, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0 and np.isclose(maps.max(), 1)
    for m in maps:
        assert inside[np.unravel_index(m.argmax(), m.shape)]
        assert m[inside].mean() > 5 * m[~inside].mean() + 0.1


@pytest.mark.parametrize("architecture", CNN_ARCHITECTURES)
@pytest.mark.parametrize("method", METHODS)
def test_real_predictors_give_patch_maps_batched_as_one_by_one(architecture, method):
    model = build_predictor(PredictorConfig(architecture, channels=(4, 8)), seed=0).train()
    images = torch.rand(3, 16, 16, 16)
    config = AttributionConfig(method, occlusion_size=6, occlusion_stride=5, occlusion_batch=16)
    maps = attribution_maps(model, images, config, batch_size=3)
    assert maps.shape == (3, 16, 16, 16) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1 + 1e-6
    single = attribution_maps(model, images, config, batch_size=1)
    assert np.allclose(maps, single, atol=1e-4)
    # the caller's model is left as it was: no hooks, still training, gradients untouched
    assert model.training and all(p.grad is None for p in model.parameters())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())


def test_trained_predictor_attends_to_the_sphere(tmp_path):
    train = sphere_patches(48, seed=1)
    # three blocks: with two (8, 16), the CAM maps of this toy task peaked off the sphere (measured)
    config = PredictorTrainConfig("cnn3d", channels=(8, 16, 32), epochs=3, batch_size=8, lr=3e-3,
                                  device="cpu")
    model = train_predictor(train, tmp_path / "run", config).model
    test = sphere_patches(8, seed=5)
    positives = np.flatnonzero(test.labels == 1)
    for method in ("gradcam", "occlusion"):
        maps = attribution_maps(model, test.images[positives], AttributionConfig(method, occlusion_size=4,
                                                                                 occlusion_stride=2))
        spheres = test.nodule_masks[positives]
        inside = np.array([m[s].mean() for m, s in zip(maps, spheres)])
        outside = np.array([m[~s].mean() for m, s in zip(maps, spheres)])
        assert np.mean(inside > outside) >= 0.75, method


def test_layer_names_are_checked():
    plain = nn.Sequential(nn.Conv3d(1, 2, 3, padding=1), nn.AdaptiveAvgPool3d(1), nn.Flatten())
    with pytest.raises(ModelConfigError, match="cam_layer"):
        Attributor(plain, AttributionConfig("gradcam"))
    with pytest.raises(ModelConfigError, match="fc_layer"):
        Attributor(plain, AttributionConfig("cam"), cam_layer="0")
    maps = attribution_maps(plain, torch.rand(2, 8, 8, 8), AttributionConfig("gradcam"), cam_layer="0")
    assert maps.shape == (2, 8, 8, 8)
    with pytest.raises(ModelConfigError, match="method"):
        AttributionConfig("lime")


def test_progress_and_cancel():
    seen = []
    attribution_maps(RegionModel(), torch.rand(5, SIZE, SIZE, SIZE), AttributionConfig("cam"), batch_size=2,
                     progress=lambda d, t: seen.append((d, t)))
    assert seen == [(2, 5), (4, 5), (5, 5)]
    with pytest.raises(SegmentationCancelled):
        attribution_maps(RegionModel(), torch.rand(2, SIZE, SIZE, SIZE), cancel=lambda: True)


# --- threshold rules ------------------------------------------------------------------------------


def _map_and_lungs():
    rng = np.random.default_rng(0)
    values = 0.2 * rng.random((12, 12, 12)).astype(np.float32)
    values[4:7, 4:7, 4:7] = 0.8 + 0.2 * rng.random((3, 3, 3))
    values[0, 0, 0] = 1.0  # the maximum lies outside the lungs
    lungs = np.zeros((12, 12, 12), bool)
    lungs[2:11, 2:11, 2:11] = True
    return values, lungs


@pytest.mark.parametrize("rule", [ThresholdRule("fraction", 0.5), ThresholdRule("otsu"),
                                  ThresholdRule("top_percent", 27 / 729 * 100)])
def test_rules_find_the_bright_cube_inside_the_lungs(rule):
    values, lungs = _map_and_lungs()
    mask = mask_from_map(values, lungs, rule)
    cube = np.zeros_like(lungs)
    cube[4:7, 4:7, 4:7] = True
    assert mask.dtype == bool and not (mask & ~lungs).any()
    assert np.array_equal(mask, cube)


def test_rule_details():
    values, lungs = _map_and_lungs()
    # fraction is relative to the maximum inside the lungs
    inside_max = values[lungs].max()
    assert np.array_equal(mask_from_map(values, lungs, ThresholdRule("fraction", 0.95)),
                          lungs & (values >= 0.95 * inside_max))
    assert mask_from_map(values, lungs, ThresholdRule("top_percent", 10)).sum() == round(0.1 * lungs.sum())
    assert mask_from_map(values, None, ThresholdRule("fraction", 1.0)).sum() == 1  # no lungs: whole patch
    assert not mask_from_map(np.zeros_like(values), lungs, ThresholdRule("otsu")).any()
    assert not mask_from_map(values, np.zeros_like(lungs), ThresholdRule("top_percent", 50)).any()
    batch = np.stack([values, values[::-1]])
    lungs2 = np.stack([lungs, lungs])
    rule = ThresholdRule("otsu")
    assert np.array_equal(mask_from_map(batch, lungs2, rule),
                          np.stack([mask_from_map(values, lungs, rule),
                                    mask_from_map(values[::-1], lungs, rule)]))
    with pytest.raises(ModelConfigError, match="lung"):
        mask_from_map(batch, lungs, rule)
    with pytest.raises(ModelConfigError):
        ThresholdRule("fraction", 0.0)
    with pytest.raises(ModelConfigError):
        ThresholdRule("top_percent", 150)
    with pytest.raises(ModelConfigError):
        ThresholdRule("mean")
