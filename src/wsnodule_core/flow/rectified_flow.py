"""Rectified flow: the interpolation, the training objective and ODE integration in either direction.

Conventions (MAISI's ``RFlowScheduler``, with its integer timesteps ``T * t`` divided by
``T = 1000``):

* time ``t`` in [0, 1]; ``t = 0`` is the clean image, ``t = 1`` pure Gaussian noise;
* ``x_t = (1 - t) x_0 + t eps``;
* the network predicts ``v = x_0 - eps`` (MAISI's target ``inputs - noise``; rectified-flow code
  that uses ``eps - x_0``, e.g. SD3-style flow matching, is converted by
  :func:`convert_velocity`, a sign flip);
* so along a trajectory ``dx/dt = eps - x_0 = -v``; a step from ``t`` to ``t'`` is
  ``x' = x + (t' - t) (-v) = x + (t - t') v`` (MAISI's ``step`` with ``dt = t - t'``);
* clean and noise estimates: ``x0_hat = x_t + t v``, ``eps_hat = x_t - (1 - t) v``.

A velocity field is any callable ``model(x, t) -> v`` with ``x`` (B, C, z, y, x) and ``t`` a (B,)
float tensor in [0, 1] (:class:`~wsnodule_core.flow.velocity.VelocityUNet`, an adapter around a
MAISI UNet, or an analytic field). :func:`euler_sample` and :func:`heun_sample` integrate from
``t_start`` to ``t_end`` in either direction: 0 -> t0 is ODE inversion (:func:`invert`),
1 -> 0 or t0 -> 0 generation. A per-step hook ``step_fn(x, t, v, step_index)`` may return a new
``(x, v)`` before the update is applied: that is where guidance plugs in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F

from wsnodule_core.errors import ModelConfigError, SamplingCancelled
from wsnodule_core.training.device import autocast

#: The velocity this package's networks predict; :func:`convert_velocity` maps to the other sign.
VELOCITY = "x0-eps"
VELOCITY_CONVENTIONS = ("x0-eps", "eps-x0")
T_SAMPLING = ("uniform", "logit-normal")
GRAD_MODES = ("none", "step", "full")
#: MAISI's number of training timesteps: its integer timestep is ``t * MAISI_T``.
MAISI_T = 1000

VelocityField = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
StepHook = Callable[[torch.Tensor, float, torch.Tensor, int], "tuple[torch.Tensor, torch.Tensor] | None"]


@dataclass(frozen=True, eq=False)
class FlowSample:
    """The end of an integration, its time grid and (when asked for) every state on it.

    ``x`` is the state at ``times[-1]``; ``trajectory[k]`` the state at ``times[k]`` (detached,
    on the CPU; ``trajectory[0]`` the input), or None when not recorded.
    """

    x: torch.Tensor
    times: tuple[float, ...]
    trajectory: list[torch.Tensor] | None = None


# --- the interpolation and its conversions -------------------------------------------------------


def _bt(t: torch.Tensor | float, like: torch.Tensor) -> torch.Tensor:
    """``t`` (scalar or (B,)) shaped to broadcast over ``like`` (B, ...)."""
    t = torch.as_tensor(t, dtype=like.dtype, device=like.device)
    return t.reshape(-1, *([1] * (like.ndim - 1))) if t.ndim else t


def interpolate(x0: torch.Tensor, noise: torch.Tensor, t: torch.Tensor | float) -> torch.Tensor:
    """``x_t = (1 - t) x0 + t noise`` (``t`` a float or one value per batch item)."""
    t = _bt(t, x0)
    return (1 - t) * x0 + t * noise


def velocity_target(x0: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """The velocity the network learns, ``x0 - noise``."""
    return x0 - noise


def clean_estimate(x_t: torch.Tensor, t: torch.Tensor | float, v: torch.Tensor) -> torch.Tensor:
    """``x0_hat = x_t + t v``: the clean image the velocity points to (exact for the true conditional v)."""
    return x_t + _bt(t, x_t) * v


def noise_estimate(x_t: torch.Tensor, t: torch.Tensor | float, v: torch.Tensor) -> torch.Tensor:
    """``eps_hat = x_t - (1 - t) v``."""
    return x_t - (1 - _bt(t, x_t)) * v


def convert_velocity(v: torch.Tensor, source: str = VELOCITY, target: str = "eps-x0") -> torch.Tensor:
    """``v`` from the ``source`` sign convention ("x0-eps" or "eps-x0") to ``target``."""
    for name in (source, target):
        if name not in VELOCITY_CONVENTIONS:
            raise ModelConfigError(f"velocity convention must be one of {VELOCITY_CONVENTIONS}, "
                                   f"got {name!r}.")
    return v if source == target else -v


def to_maisi_timesteps(t: torch.Tensor | float, num_train_timesteps: int = MAISI_T) -> torch.Tensor:
    """MAISI's timestep (``RFlowScheduler``) of time ``t``: ``t * num_train_timesteps``."""
    return torch.as_tensor(t, dtype=torch.float32) * num_train_timesteps


def from_maisi_timesteps(timesteps: torch.Tensor | float, num_train_timesteps: int = MAISI_T) -> torch.Tensor:
    """Time ``t`` in [0, 1] of a MAISI timestep."""
    return torch.as_tensor(timesteps, dtype=torch.float32) / num_train_timesteps


# --- random draws ----------------------------------------------------------------------------------


def sample_noise(like: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard normal noise shaped as ``like``, drawn on the generator's device (CPU generators keep
    draws identical across devices), then moved to ``like``'s device and dtype."""
    device = generator.device if generator is not None else like.device
    noise = torch.randn(like.shape, generator=generator, device=device, dtype=torch.float32)
    return noise.to(device=like.device, dtype=like.dtype)


def sample_times(n: int, generator: torch.Generator | None = None, *, method: str = "uniform",
                 loc: float = 0.0, scale: float = 1.0) -> torch.Tensor:
    """``n`` training times in [0, 1] (CPU float32): ``uniform``, or ``logit-normal``
    ``sigmoid(N(loc, scale^2))`` (SD3; MAISI's ``sample_method``), which favours mid times."""
    if method not in T_SAMPLING:
        raise ModelConfigError(f"t_sampling must be one of {T_SAMPLING}, got {method!r}.")
    device = generator.device if generator is not None else "cpu"
    if method == "uniform":
        t = torch.rand(n, generator=generator, device=device)
    else:
        t = torch.sigmoid(loc + scale * torch.randn(n, generator=generator, device=device))
    return t.cpu()


def partial_noise(x0: torch.Tensor, t0: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x_t0`` with fresh noise: ``(1 - t0) x0 + t0 eps`` (the stochastic alternative to :func:`invert`)."""
    _check_time(t0, "t0")
    return interpolate(x0, sample_noise(x0, generator), float(t0))


# --- the objective ---------------------------------------------------------------------------------


def rf_loss(model: VelocityField, x0: torch.Tensor, generator: torch.Generator | None = None, *,
            t: torch.Tensor | None = None, noise: torch.Tensor | None = None, t_sampling: str = "uniform",
            loc: float = 0.0, scale: float = 1.0, use_amp: bool = False) -> torch.Tensor:
    """The rectified-flow objective: mean squared error between ``model(x_t, t)`` and ``x0 - noise``.

    ``t`` (B,) and ``noise`` (x0's shape) are drawn from ``generator`` unless given
    (:func:`sample_times`, :func:`sample_noise`). ``use_amp`` runs the model under CUDA autocast;
    the loss is computed in float32.
    """
    if t is None:
        t = sample_times(x0.shape[0], generator, method=t_sampling, loc=loc, scale=scale)
    if noise is None:
        noise = sample_noise(x0, generator)
    t = torch.as_tensor(t, dtype=torch.float32).to(x0.device).reshape(-1)
    if t.numel() != x0.shape[0]:
        raise ModelConfigError(f"rf_loss: {t.numel()} times for a batch of {x0.shape[0]}.")
    x_t = interpolate(x0, noise, t)
    with autocast(x0.device, use_amp):
        v = model(x_t, t)
    return F.mse_loss(v.float(), velocity_target(x0, noise).float())


# --- ODE integration -------------------------------------------------------------------------------


def _check_time(value: float, name: str) -> None:
    if not 0.0 <= float(value) <= 1.0:
        raise ModelConfigError(f"{name} must lie in [0, 1] (0 clean, 1 noise), got {value!r}.")


def time_grid(t_start: float, t_end: float, n_steps: int) -> tuple[float, ...]:
    """``n_steps + 1`` evenly spaced times from ``t_start`` to ``t_end`` (either direction)."""
    _check_time(t_start, "t_start")
    _check_time(t_end, "t_end")
    if int(n_steps) < 1:
        raise ModelConfigError(f"n_steps must be at least 1, got {n_steps!r}.")
    return tuple(float(v) for v in torch.linspace(float(t_start), float(t_end), int(n_steps) + 1,
                                                  dtype=torch.float64))


def _grid(t_start, t_end, n_steps, times) -> tuple[float, ...]:
    if times is None:
        return time_grid(t_start, t_end, n_steps)
    grid = tuple(float(v) for v in times)
    if len(grid) < 2:
        raise ModelConfigError(f"times needs at least two values, got {len(grid)}.")
    for value in grid:
        _check_time(value, "every time")
    diffs = [b - a for a, b in zip(grid, grid[1:])]
    if not (all(d > 0 for d in diffs) or all(d < 0 for d in diffs)):
        raise ModelConfigError("times must be strictly increasing (inversion) or strictly decreasing "
                               "(generation).")
    return grid


def integrate(model: VelocityField, x: torch.Tensor, t_start: float = 1.0, t_end: float = 0.0,
              n_steps: int = 30, *, method: str = "euler", times: Sequence[float] | None = None,
              step_fn: StepHook | None = None, return_trajectory: bool = False, grad: str = "none",
              use_amp: bool = False, progress: Callable[[int, int], None] | None = None,
              cancel: Callable[[], bool] | None = None) -> FlowSample:
    """Integrate ``dx/dt = -model(x, t)`` from ``t_start`` to ``t_end`` with Euler or Heun steps.

    Parameters
    ----------
    model
        The velocity field ``model(x, t) -> v`` (v = x0 - eps), called with t as a (B,) tensor.
    x
        The state at ``t_start`` (B, C, z, y, x): a batch of patches, all at the same time.
    t_start, t_end, n_steps
        The evenly spaced time grid; ``times`` replaces it with any strictly monotone sequence.
        ``t_end < t_start`` generates (towards clean), ``t_end > t_start`` inverts (towards noise).
    method
        "euler" (one model call per step) or "heun" (two; second order).
    step_fn
        ``step_fn(x, t, v, step_index)`` called once per step, after the (first) velocity
        ``v = model(x, t)`` and before the update; it returns None (no change) or a new
        ``(x, v)`` pair that the step then uses. With Heun, the corrector velocity is evaluated
        at the predictor's point made from the returned pair and is not passed to the hook.
    return_trajectory
        Also keep every state (detached, on the CPU, so GPU memory stays bounded).
    grad
        "none" (default): no autograd. "step": each step's ``x`` is a fresh leaf that requires
        grad when the model is called, so the hook can differentiate through ``v`` and
        :func:`clean_estimate` with respect to ``x`` (DPS); the graph is dropped after each step.
        "full": autograd stays on across all steps (back-propagation through the whole
        trajectory; memory grows with ``n_steps``).
    use_amp
        Run the model under CUDA autocast (float16); the state stays float32.
    progress, cancel
        ``progress(done, total)`` after each step; ``cancel()`` checked before each step, True
        raises :class:`SamplingCancelled`.
    """
    if method not in ("euler", "heun"):
        raise ModelConfigError(f"method must be 'euler' or 'heun', got {method!r}.")
    if grad not in GRAD_MODES:
        raise ModelConfigError(f"grad must be one of {GRAD_MODES}, got {grad!r}.")
    grid = _grid(t_start, t_end, n_steps, times)
    total = len(grid) - 1
    trajectory = [x.detach().cpu()] if return_trajectory else None

    def velocity(state: torch.Tensor, t: float) -> torch.Tensor:
        tt = torch.full((state.shape[0],), t, dtype=torch.float32, device=state.device)
        with autocast(state.device, use_amp):
            v = model(state, tt)
        return v.to(state.dtype)

    context = torch.no_grad() if grad == "none" else torch.enable_grad()
    with context:
        for k in range(total):
            if cancel is not None and cancel():
                raise SamplingCancelled(f"integration cancelled after {k} of {total} steps.")
            t, t_next = grid[k], grid[k + 1]
            if grad == "step":
                x = x.detach().requires_grad_(True)
            v = velocity(x, t)
            if step_fn is not None:
                changed = step_fn(x, t, v, k)
                if changed is not None:
                    x, v = changed
            h = t - t_next                      # x' = x + (t - t') v
            if method == "euler":
                x_next = x + h * v
            else:
                v_next = velocity(x + h * v, t_next)
                x_next = x + h * 0.5 * (v + v_next)
            x = x_next.detach() if grad == "step" else x_next
            if trajectory is not None:
                trajectory.append(x.detach().cpu())
            if progress is not None:
                progress(k + 1, total)
    return FlowSample(x, grid, trajectory)


def euler_sample(model: VelocityField, x: torch.Tensor, t_start: float = 1.0, t_end: float = 0.0,
                 n_steps: int = 30, **options) -> FlowSample:
    """:func:`integrate` with Euler steps (MAISI's sampler); ``options`` as there."""
    return integrate(model, x, t_start, t_end, n_steps, method="euler", **options)


def heun_sample(model: VelocityField, x: torch.Tensor, t_start: float = 1.0, t_end: float = 0.0,
                n_steps: int = 30, **options) -> FlowSample:
    """:func:`integrate` with Heun steps (second order, two model calls per step); ``options`` as there."""
    return integrate(model, x, t_start, t_end, n_steps, method="heun", **options)


def invert(model: VelocityField, x0: torch.Tensor, t0: float, n_steps: int, *, method: str = "euler",
           **options) -> FlowSample:
    """Deterministic ODE inversion of clean ``x0`` to time ``t0`` (0 -> t0); integrating the result
    back (t0 -> 0, same method and steps) returns ``x0`` up to discretisation error."""
    _check_time(t0, "t0")
    if not float(t0) > 0:
        raise ModelConfigError("t0 must be above 0 to invert (0 is the clean image itself).")
    return integrate(model, x0, 0.0, float(t0), n_steps, method=method, **options)
