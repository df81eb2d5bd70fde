"""Guidance of the rectified-flow prior: the two rules, the start state, batching, the difference mask."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from wsnodule_core.errors import ModelConfigError, SegmentationCancelled
from wsnodule_core.flow.attribution import ThresholdRule
from wsnodule_core.flow.guidance import (GuidanceConfig, difference_mask, guidance_loss, guide, nodule_logit,
                                         start_state)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 16
CUBE = (slice(6, 10),) * 3


class GaussianField(nn.Module):
    """The exact velocity E[x0 - eps | x_t] when every voxel of x0 is N(mu, s^2) (voxel-wise, affine)."""

    def __init__(self, mu: float = 0.3, s: float = 0.2) -> None:
        super().__init__()
        self.mu, self.s = mu, s

    def forward(self, x, t):
        t = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        var = (1 - t) ** 2 * self.s ** 2 + t ** 2
        return self.mu + ((1 - t) * self.s ** 2 - t) / var * (x - (1 - t) * self.mu)


class PointMassField(nn.Module):
    """v = (c - x) / t: x0_hat = x + t v = c whatever x is, so d x0_hat / d x_t = 0."""

    def __init__(self, c: float = 0.3) -> None:
        super().__init__()
        self.c = c

    def forward(self, x, t):
        t = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (self.c - x) / t


class CountBackward(torch.autograd.Function):
    """Identity that counts its backward calls in ``counter``."""

    @staticmethod
    def forward(ctx, x, counter):
        ctx.counter = counter
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        ctx.counter[0] += 1
        return grad, None


class TinyConvField(nn.Module):
    """A small non-linear convolutional velocity (non-trivial Jacobian) that counts backward passes."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv3d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv3d(4, 1, 3, padding=1)
        self.backward_calls = [0]

    def forward(self, x, t):
        t = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        h = CountBackward.apply(x, self.backward_calls)
        return 0.3 * self.conv2(torch.tanh(self.conv1(h))) * (1 + t) - 0.5 * h


class CubePredictor(nn.Module):
    """logit = gain * (mean intensity in the central cube - 0.35): the evidence lies in CUBE only."""

    def __init__(self, gain: float = 20.0, two_class: bool = False) -> None:
        super().__init__()
        self.gain = nn.Parameter(torch.tensor(gain))
        self.two_class = two_class

    def forward(self, x):
        z = self.gain * (x[(slice(None), 0, *CUBE)].mean(dim=(1, 2, 3)) - 0.35)
        return torch.stack([-z / 2, z / 2], dim=1) if self.two_class else z


def nodule_batch(n: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = 0.1 + 0.02 * torch.randn(n, 1, SIZE, SIZE, SIZE, generator=g)
    x[(slice(None), 0, *CUBE)] += 0.5
    return x


def cube_mask() -> np.ndarray:
    mask = np.zeros((SIZE,) * 3, bool)
    mask[CUBE] = True
    return mask


def test_no_guidance_with_inversion_reconstructs_the_input():
    x = nodule_batch()
    config = GuidanceConfig(t0=0.6, start="invert", n_steps=40, method="heun", guided_steps=0)
    result = guide(GaussianField(), CubePredictor(), x, config)
    assert result.counterfactual.shape == x.shape
    assert float(result.difference.max()) < 2e-3
    torch.testing.assert_close(result.p_after, result.p_before, atol=1e-3, rtol=0)
    # and scale 0 with K > 0 is no guidance either
    same = guide(GaussianField(), CubePredictor(), x, replace(config, guided_steps=5, scale=0.0))
    torch.testing.assert_close(same.counterfactual, result.counterfactual)


@pytest.mark.parametrize("rule", ["dps", "x0"])
def test_guidance_removes_the_evidence_inside_the_cube(rule):
    x = nodule_batch()
    config = GuidanceConfig(t0=0.5, n_steps=16, method="heun", guided_steps=4, rule=rule, scale=1.0)
    result = guide(GaussianField(), CubePredictor(), x, config)
    assert torch.all(result.p_after < result.p_before - 0.05)
    diff = result.difference[:, 0].numpy()
    inside, outside = diff[:, CUBE[0], CUBE[1], CUBE[2]], diff[:, ~cube_mask()]
    assert inside.min() > 0.05
    assert outside.max() < 0.01
    assert torch.all(result.counterfactual[(slice(None), 0, *CUBE)] < x[(slice(None), 0, *CUBE)])
    mask = difference_mask(result.difference, None, ThresholdRule("fraction", 0.5))
    assert mask.shape == (2, SIZE, SIZE, SIZE)
    assert all(np.array_equal(m, cube_mask()) for m in mask)


def test_dps_differentiates_through_the_velocity_network():
    # x0_hat does not depend on x_t for this field: DPS sees a zero gradient, the x0 rule does not
    x = nodule_batch(1)
    base = GuidanceConfig(t0=0.5, start="noise", n_steps=4, guided_steps=2, scale=0.5, normalise="none",
                          loss="logit")
    unguided = guide(PointMassField(), CubePredictor(), x, replace(base, guided_steps=0))
    dps = guide(PointMassField(), CubePredictor(), x, replace(base, rule="dps"))
    flowchef = guide(PointMassField(), CubePredictor(), x, replace(base, rule="x0"))
    # (every path of this field ends on c, so compare the states right after the guided steps)
    for k in (1, 2):
        torch.testing.assert_close(dps.trajectory.states[k], unguided.trajectory.states[k], atol=1e-6, rtol=0)
        assert float((flowchef.trajectory.states[k] - unguided.trajectory.states[k]).abs().max()) > 1e-2


def test_backward_passes_through_the_velocity_model_only_for_dps():
    x = nodule_batch(2)
    config = GuidanceConfig(t0=0.5, n_steps=5, guided_steps=3, scale=0.5)
    for rule, expected in (("dps", 3), ("x0", 0)):
        field = TinyConvField()
        predictor = CubePredictor()
        result = guide(field, predictor, x, replace(config, rule=rule))
        assert field.backward_calls[0] == expected, rule
        assert all(p.grad is None for p in field.parameters())
        assert predictor.gain.grad is None
        assert torch.all(result.p_after < result.p_before)
    dps = guide(TinyConvField(), CubePredictor(), x, replace(config, rule="dps"))
    flowchef = guide(TinyConvField(), CubePredictor(), x, replace(config, rule="x0"))
    assert float((dps.counterfactual - flowchef.counterfactual).abs().max()) > 1e-4


@pytest.mark.parametrize("start", ["noise", "invert"])
def test_batched_equals_one_by_one(start):
    x = nodule_batch(3, seed=1)
    config = GuidanceConfig(t0=0.4, start=start, n_steps=4, guided_steps=2, method="heun", seed=7,
                            clamp=None)
    field, predictor = TinyConvField(), CubePredictor(two_class=True)
    batched = guide(field, predictor, x, config)
    for i in range(3):
        single = guide(field, predictor, x[i:i + 1], replace(config, seed=7 + i))
        torch.testing.assert_close(single.counterfactual[0], batched.counterfactual[i], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(single.p_after[0], batched.p_after[i], atol=1e-5, rtol=1e-5)
    # explicit seeds give the same as the default ones; other seeds give other noise
    assert torch.equal(start_state(field, x, config, seeds=[7, 8, 9]), start_state(field, x, config))
    if start == "noise":
        assert not torch.equal(start_state(field, x, config, seeds=[1, 2, 3]), start_state(field, x, config))


def test_trajectory_progress_and_precomputed_start():
    x = nodule_batch(2)
    config = GuidanceConfig(t0=0.5, n_steps=6, guided_steps=2, invert_steps=3)
    calls = []
    result = guide(GaussianField(), CubePredictor(), x, config, progress=lambda d, n: calls.append((d, n)))
    traj = result.trajectory
    assert len(traj) == len(traj.times) == config.n_steps + 1
    assert traj.times[0] == pytest.approx(0.5) and traj.times[-1] == 0.0
    assert all(s.device.type == "cpu" and not s.requires_grad and s.shape == x.shape for s in traj.states)
    torch.testing.assert_close(traj.states[-1].clamp(0, 1), result.counterfactual)
    assert calls == [(k, 9) for k in range(1, 10)]
    start = start_state(GaussianField(), x, config)
    again = guide(GaussianField(), CubePredictor(), x, config, start=start, keep_trajectory=False)
    assert again.trajectory is None
    torch.testing.assert_close(again.counterfactual, result.counterfactual)


def test_unguided_reference_removes_the_reconstruction_error():
    x = nodule_batch(1)
    config = GuidanceConfig(t0=0.7, start="noise", n_steps=8, guided_steps=3, scale=1.0, rule="x0",
                            clamp=None)
    to_input = guide(GaussianField(), CubePredictor(), x, config)
    to_unguided = guide(GaussianField(), CubePredictor(), x, replace(config, reference="unguided"))
    torch.testing.assert_close(to_input.counterfactual, to_unguided.counterfactual)
    outside = ~torch.as_tensor(cube_mask())
    assert float(to_input.difference[0, 0][outside].mean()) > 0.02  # fresh noise changes everything
    assert float(to_unguided.difference[0, 0][outside].max()) < 1e-5
    assert float(to_unguided.difference[0, 0][CUBE].mean()) > 0.02


def test_cancel_stops_guidance():
    x = nodule_batch(1)
    seen = []

    def cancel():
        seen.append(1)
        return len(seen) > 3

    with pytest.raises(SegmentationCancelled):
        guide(GaussianField(), CubePredictor(), x, GuidanceConfig(n_steps=10), cancel=cancel)
    assert len(seen) == 4


def test_losses_and_the_logit_adapter():
    z = torch.tensor([2.0, -1.0])
    assert float(guidance_loss(z, "no_nodule", "bce")) == pytest.approx(
        sum(math.log1p(math.exp(v)) for v in z))
    assert float(guidance_loss(z, "nodule", "bce")) == pytest.approx(sum(math.log1p(math.exp(-v)) for v in z))
    assert float(guidance_loss(z, "no_nodule", "log_prob")) == pytest.approx(
        sum(math.log(1 / (1 + math.exp(-v))) for v in z))
    assert float(guidance_loss(z, "nodule", "logit")) == pytest.approx(-1.0)
    x = nodule_batch(2)
    one = nodule_logit(CubePredictor(), x)
    two = nodule_logit(CubePredictor(two_class=True), x)
    torch.testing.assert_close(one, two)
    with pytest.raises(ModelConfigError):
        nodule_logit(lambda b: torch.zeros(len(b), 3), x)


def test_guidance_towards_nodule_raises_the_probability():
    x = nodule_batch(1)
    x[(0, 0, *CUBE)] -= 0.3
    result = guide(GaussianField(), CubePredictor(), x,
                   GuidanceConfig(n_steps=8, guided_steps=3, target="nodule", rule="x0"))
    assert float(result.p_after[0]) > float(result.p_before[0]) + 0.05


@pytest.mark.parametrize("changes", [
    {"t0": 0.0}, {"t0": 1.5}, {"start": "sde"}, {"n_steps": 0}, {"method": "rk4"}, {"guided_steps": 21},
    {"guided_steps": -1}, {"rule": "tfg"}, {"scale": -1.0}, {"scale": float("nan")}, {"normalise": "max"},
    {"target": "healthy"}, {"loss": "mse"}, {"clamp": (1.0, 0.0)}, {"seed": -1}, {"invert_steps": 0},
    {"reference": "both"},
])
def test_config_validation(changes):
    with pytest.raises(ModelConfigError):
        GuidanceConfig(**changes)


def test_bad_inputs_are_refused():
    with pytest.raises(ModelConfigError):
        guide(GaussianField(), CubePredictor(), torch.zeros(2, SIZE, SIZE, SIZE))
    x = nodule_batch(2)
    with pytest.raises(ModelConfigError):
        guide(GaussianField(), CubePredictor(), x, GuidanceConfig(start="noise"), seeds=[1])
    with pytest.raises(ModelConfigError):
        guide(GaussianField(), CubePredictor(), x, start=torch.zeros(1, 1, SIZE, SIZE, SIZE))


def test_difference_mask_floor_and_lungs():
    diff = np.zeros((1, 1, SIZE, SIZE, SIZE), np.float32)
    diff[(0, 0, *CUBE)] = 0.2
    diff[0, 0, 0, 0, 0] = 0.3            # outside the lungs: never kept
    diff[0, 0, 2, 2, 2] = 0.001          # reconstruction noise: below the floor
    lungs = np.ones((1, SIZE, SIZE, SIZE), bool)
    lungs[0, 0, 0, 0] = False
    mask = difference_mask(diff, lungs, ThresholdRule("fraction", 0.5), floor=0.01)
    assert np.array_equal(mask[0], cube_mask())
    noise_only = np.full((SIZE,) * 3, 0.004, np.float32)
    assert not difference_mask(noise_only, None, ThresholdRule("otsu"), floor=0.01).any()
    assert difference_mask(noise_only, None, ThresholdRule("otsu"), floor=0.0).all()
    with pytest.raises(ModelConfigError):
        difference_mask(diff, None, floor=-1.0)


def test_models_are_left_as_they_were_and_a_blind_predictor_changes_nothing():
    field, predictor = TinyConvField(), CubePredictor()
    field.train()
    predictor.conv = nn.Conv3d(1, 1, 1)
    predictor.conv.requires_grad_(False)   # a frozen part must stay frozen, the rest trainable
    x = nodule_batch(1)
    config = GuidanceConfig(t0=0.5, n_steps=4, guided_steps=2, method="heun")
    guide(field, predictor, x, config)
    assert field.training and predictor.training
    assert all(p.requires_grad for p in field.parameters()) and predictor.gain.requires_grad
    assert not predictor.conv.weight.requires_grad

    class Blind(nn.Module):
        def forward(self, x):
            return torch.full((len(x),), 3.0)

    for rule in ("dps", "x0"):
        guided = guide(field, Blind(), x, replace(config, rule=rule))
        unguided = guide(field, Blind(), x, replace(config, guided_steps=0))
        torch.testing.assert_close(guided.counterfactual, unguided.counterfactual)


def test_with_the_library_velocity_unet_and_predictor():
    from wsnodule_core.flow.predictors import PredictorConfig, build_predictor
    from wsnodule_core.flow.velocity import VelocityConfig, build_velocity_model

    torch.manual_seed(0)
    field = build_velocity_model(VelocityConfig(channels=(8, 16), attention=(False, False),
                                                num_head_channels=8, patch_size=16))
    predictor = build_predictor(PredictorConfig(channels=(4, 8)), seed=0)
    x = nodule_batch(2)
    for rule in ("dps", "x0"):
        result = guide(field, predictor, x, GuidanceConfig(t0=0.4, n_steps=3, guided_steps=2, rule=rule,
                                                           method="heun"))
        assert result.counterfactual.shape == x.shape and torch.isfinite(result.counterfactual).all()
        assert result.p_after.shape == (2,) and float(result.difference.max()) > 0
        assert all(p.grad is None for p in [*field.parameters(), *predictor.parameters()])
