"""Rectified-flow conventions and ODE integration, checked against analytic velocity fields."""

from __future__ import annotations

import math

import pytest
import torch

from wsnodule_core.errors import ModelConfigError, SegmentationCancelled
from wsnodule_core.flow.rectified_flow import (SamplingCancelled, clean_estimate, convert_velocity,
                                               euler_sample, from_maisi_timesteps, heun_sample, integrate,
                                               interpolate, invert, noise_estimate, partial_noise, rf_loss,
                                               sample_noise, sample_times, time_grid, to_maisi_timesteps,
                                               velocity_target)


class GaussianField(torch.nn.Module):
    """The exact marginal velocity E[x0 - eps | x_t] when every voxel of x0 is N(mu, s^2).

    Its flow map is affine: x(t) = m_t + sigma_t / sigma_u (x(u) - m_u), with m_t = (1 - t) mu and
    sigma_t^2 = (1 - t)^2 s^2 + t^2.
    """

    def __init__(self, mu: float = 0.5, s: float = 0.2) -> None:
        super().__init__()
        self.mu, self.s = mu, s

    def sigma(self, t):
        return math.sqrt((1 - t) ** 2 * self.s ** 2 + t ** 2)

    def forward(self, x, t):
        t = t.to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        var = (1 - t) ** 2 * self.s ** 2 + t ** 2
        return self.mu + ((1 - t) * self.s ** 2 - t) / var * (x - (1 - t) * self.mu)

    def exact(self, x, t_from, t_to):
        return (1 - t_to) * self.mu + self.sigma(t_to) / self.sigma(t_from) * (x - (1 - t_from) * self.mu)


class PointMassField(torch.nn.Module):
    """The exact velocity when x0 is always ``c``: (c - x_t) / t; every path is a straight line."""

    def __init__(self, c: torch.Tensor) -> None:
        super().__init__()
        self.c = c

    def forward(self, x, t):
        t = t.clamp_min(1e-12).to(x.dtype).reshape(-1, *([1] * (x.ndim - 1)))
        return (self.c - x) / t


class ConstantField(torch.nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x, t):
        return torch.full_like(x, self.value)


def _noise(shape=(3, 1, 4, 4, 4), seed=0):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_interpolation_and_estimates_invert_each_other():
    x0, eps = _noise(seed=1), _noise(seed=2)
    t = torch.tensor([0.0, 0.3, 1.0], dtype=torch.float64)
    x_t = interpolate(x0, eps, t)
    assert torch.allclose(x_t[0], x0[0]) and torch.allclose(x_t[2], eps[2])
    v = velocity_target(x0, eps)
    assert torch.allclose(v, x0 - eps)
    assert torch.allclose(clean_estimate(x_t, t, v), x0)
    assert torch.allclose(noise_estimate(x_t, t, v), eps)
    assert torch.equal(convert_velocity(v, "x0-eps", "eps-x0"), -v)
    assert torch.equal(convert_velocity(v, "eps-x0", "eps-x0"), v)
    with pytest.raises(ModelConfigError):
        convert_velocity(v, "x0+eps")
    assert float(to_maisi_timesteps(0.25)) == 250.0 and float(from_maisi_timesteps(750)) == 0.75


def test_conventions_match_monai_rflow_scheduler():
    from monai.networks.schedulers import RFlowScheduler

    x0, eps = _noise(seed=3).float(), _noise(seed=4).float()
    scheduler = RFlowScheduler(num_train_timesteps=1000, use_discrete_timesteps=True)
    timesteps = torch.tensor([0, 300, 700])
    assert torch.allclose(scheduler.add_noise(x0, eps, timesteps), interpolate(x0, eps, timesteps / 1000.0))
    field = GaussianField()
    scheduler.set_timesteps(10)
    x = eps.clone()
    grid = list(scheduler.timesteps) + [torch.tensor(0)]
    for t, t_next in zip(grid[:-1], grid[1:]):
        v = field(x, torch.full((x.shape[0],), float(t) / 1000.0))
        x, _ = scheduler.step(v, int(t), x, int(t_next))
    ours = euler_sample(field, eps.clone(), 1.0, 0.0, 10).x
    assert torch.allclose(ours, x, atol=1e-5)


def test_euler_is_exact_on_straight_paths():
    c = torch.linspace(-1, 1, 64, dtype=torch.float64).reshape(1, 1, 4, 4, 4)
    out = euler_sample(PointMassField(c), _noise((2, 1, 4, 4, 4)), 1.0, 0.0, 3)
    assert torch.allclose(out.x, c.expand_as(out.x), atol=1e-12)


def test_heun_beats_euler_on_a_curved_flow():
    field = GaussianField(mu=0.5, s=0.2)
    x1 = _noise((4, 1, 4, 4, 4), seed=5)
    exact = field.exact(x1, 1.0, 0.0)
    assert torch.allclose(exact, 0.5 + 0.2 * x1)
    errors = {}
    for n in (5, 40):
        for name, sampler in (("euler", euler_sample), ("heun", heun_sample)):
            errors[name, n] = float((sampler(field, x1, 1.0, 0.0, n).x - exact).abs().max())
    assert errors["heun", 5] < errors["euler", 5] and errors["heun", 40] < errors["euler", 40]
    assert errors["euler", 40] < errors["euler", 5] and errors["heun", 40] < errors["heun", 5]
    assert errors["heun", 40] < 2e-3
    # orders of convergence: 4x the steps cuts Euler's error about 4x, Heun's about 16x
    wide = GaussianField(mu=0.5, s=0.5)
    exact = wide.exact(x1, 0.9, 0.1)
    e = {(name, n): float((sampler(wide, x1, 0.9, 0.1, n).x - exact).abs().max())
         for name, sampler in (("euler", euler_sample), ("heun", heun_sample)) for n in (32, 128)}
    assert 3.0 < e["euler", 32] / e["euler", 128] < 5.0
    assert 12.0 < e["heun", 32] / e["heun", 128] < 20.0


def test_inversion_then_generation_returns_the_input():
    field = GaussianField(mu=0.3, s=0.3)
    x0 = 0.3 + 0.3 * _noise((2, 1, 4, 4, 4), seed=6)
    for t0 in (0.5, 1.0):
        inverted = invert(field, x0, t0, 60, method="heun")
        assert inverted.times[0] == 0.0 and inverted.times[-1] == t0
        assert torch.allclose(inverted.x, field.exact(x0, 0.0, t0), atol=2e-3)
        back = heun_sample(field, inverted.x, t0, 0.0, 60).x
        assert torch.allclose(back, x0, atol=2e-3)
    with pytest.raises(ModelConfigError):
        invert(field, x0, 0.0, 10)


def test_trajectory_length_order_and_device():
    field = GaussianField(mu=0.5, s=0.5)
    x1 = _noise((2, 1, 4, 4, 4), seed=7)
    out = heun_sample(field, x1, 0.9, 0.1, 16, return_trajectory=True)
    assert len(out.trajectory) == 17 and len(out.times) == 17
    assert out.times[0] == pytest.approx(0.9) and out.times[-1] == pytest.approx(0.1)
    assert all(a > b for a, b in zip(out.times, out.times[1:]))
    assert torch.equal(out.trajectory[0], x1) and torch.equal(out.trajectory[-1], out.x.cpu())
    assert all(s.device.type == "cpu" and not s.requires_grad for s in out.trajectory)
    for state, t in zip(out.trajectory, out.times):
        assert torch.allclose(state, field.exact(x1, 0.9, t), atol=5e-3)
    assert heun_sample(field, x1, 0.9, 0.1, 2).trajectory is None


def test_hook_called_every_step_and_can_change_x_or_v():
    x = torch.zeros(2, 1, 4, 4, 4)
    seen = []

    def record(x, t, v, k):
        seen.append((k, t))

    euler_sample(ConstantField(1.0), x, 1.0, 0.0, 4, step_fn=record)
    assert seen == [(k, t) for k, t in enumerate(time_grid(1.0, 0.0, 4)[:-1])]
    plain = euler_sample(ConstantField(1.0), x, 1.0, 0.0, 4).x
    assert torch.allclose(plain, torch.ones_like(x))            # x + (1 - 0) * v
    shifted = euler_sample(ConstantField(1.0), x, 1.0, 0.0, 4, step_fn=lambda x, t, v, k: (x + 0.5, v)).x
    assert torch.allclose(shifted, plain + 4 * 0.5)
    frozen = heun_sample(ConstantField(1.0), x, 1.0, 0.0, 4,
                         step_fn=lambda x, t, v, k: (x, torch.zeros_like(v))).x
    assert torch.allclose(frozen, 0.5 * plain)                   # Heun: corrector velocity unhooked


def test_grad_modes():
    field = GaussianField(mu=0.5, s=0.2)
    grads = []

    def dps_like(x, t, v, k):
        assert x.requires_grad
        x0_hat = clean_estimate(x, t, field(x, torch.full((x.shape[0],), t)))
        grads.append(torch.autograd.grad(x0_hat.sum(), x)[0])
        return None

    x1 = _noise((1, 1, 2, 2, 2), seed=8)
    out = euler_sample(field, x1, 0.8, 0.2, 3, step_fn=dps_like, grad="step")
    assert len(grads) == 3 and not out.x.requires_grad
    # d x0_hat / d x_t for the Gaussian field is (1 - t) s^2 / sigma_t^2 (x0_hat is affine in x_t)
    t = 0.8
    expected = (1 - t) * field.s ** 2 / field.sigma(t) ** 2
    assert torch.allclose(grads[0], torch.full_like(grads[0], expected), atol=1e-6)
    leaf = x1.clone().requires_grad_(True)
    end = heun_sample(field, leaf, 1.0, 0.0, 30, grad="full").x
    end.sum().backward()
    assert torch.allclose(leaf.grad, torch.full_like(leaf, 0.2), atol=1e-3)   # d x(0) / d x(1) = s
    assert not euler_sample(field, leaf, 1.0, 0.0, 2).x.requires_grad          # "none": no graph


def test_progress_and_cancel():
    calls, x = [], torch.zeros(1, 1, 2, 2, 2)
    euler_sample(ConstantField(0.0), x, 1.0, 0.0, 5, progress=lambda d, n: calls.append((d, n)))
    assert calls == [(k, 5) for k in range(1, 6)]
    steps = []
    with pytest.raises(SamplingCancelled) as info:
        euler_sample(ConstantField(0.0), x, 1.0, 0.0, 5, step_fn=lambda *a: steps.append(a[3]),
                     cancel=lambda: len(steps) >= 2)
    assert steps == [0, 1] and isinstance(info.value, SegmentationCancelled)


def test_bad_grids_are_refused():
    field = ConstantField(0.0)
    x = torch.zeros(1, 1, 2, 2, 2)
    with pytest.raises(ModelConfigError):
        euler_sample(field, x, 1.2, 0.0, 4)
    with pytest.raises(ModelConfigError):
        euler_sample(field, x, 1.0, 0.0, 0)
    with pytest.raises(ModelConfigError):
        euler_sample(field, x, times=[1.0, 0.5, 0.7])
    with pytest.raises(ModelConfigError):
        integrate(field, x, method="rk4")
    custom = euler_sample(ConstantField(1.0), x, times=[0.0, 0.1, 0.4])
    assert custom.times == (0.0, 0.1, 0.4) and torch.allclose(custom.x, torch.full_like(x, -0.4))


def test_loss_is_zero_for_the_exact_field_and_not_for_a_wrong_one():
    c = torch.linspace(0, 1, 64).reshape(1, 1, 4, 4, 4)
    x0 = c.expand(6, 1, 4, 4, 4).contiguous()
    exact = rf_loss(PointMassField(c), x0, torch.Generator().manual_seed(0))
    assert float(exact) < 1e-8
    wrong = rf_loss(ConstantField(0.0), x0, torch.Generator().manual_seed(0))
    assert float(wrong) > 0.5
    t = torch.full((6,), 0.5)
    noise = torch.zeros_like(x0)
    assert float(rf_loss(ConstantField(0.0), x0, t=t, noise=noise)) == pytest.approx(float((x0 ** 2).mean()))
    with pytest.raises(ModelConfigError):
        rf_loss(ConstantField(0.0), x0, t=torch.ones(2))


def test_time_sampling_and_partial_noise():
    g = torch.Generator().manual_seed(0)
    uniform = sample_times(4000, g)
    logit = sample_times(4000, g, method="logit-normal")
    assert 0 <= float(uniform.min()) and float(uniform.max()) < 1
    assert 0 < float(logit.min()) and float(logit.max()) < 1
    assert abs(float(logit.mean()) - 0.5) < 0.02 and float(logit.std()) < float(uniform.std())
    with pytest.raises(ModelConfigError):
        sample_times(3, g, method="beta")
    x0 = torch.rand(2, 1, 4, 4, 4)
    noisy = partial_noise(x0, 0.3, torch.Generator().manual_seed(5))
    eps = sample_noise(x0, torch.Generator().manual_seed(5))
    assert torch.allclose(noisy, 0.7 * x0 + 0.3 * eps)
    with pytest.raises(ModelConfigError):
        partial_noise(x0, 1.5)
