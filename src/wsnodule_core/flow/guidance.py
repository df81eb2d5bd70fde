"""Training-free guidance of the rectified-flow prior towards "no nodule": counterfactual and difference.

A patch ``x`` (in the prior's intensity range, [0, 1] by default) is taken to time ``t0``, either by
deterministic ODE inversion (``start="invert"``) or by fresh seeded noise
(``start="noise"``, ``x_t0 = (1 - t0) x + t0 eps``), and integrated back to ``t = 0`` in
``n_steps`` steps. The first ``guided_steps`` (K) steps of that return path are steered by the
gradient of a predictor loss that pushes the predictor towards "no nodule"; the result is the
counterfactual ``x_cf`` and the segmentation evidence is ``|x - x_cf|`` (Petersen et al. 2026;
Wolleb et al. 2022's anomaly maps).

Two rules, applied through :func:`~wsnodule_core.flow.rectified_flow.integrate`'s ``step_fn`` at each
guided step from ``t`` to ``t'`` (``v = model(x_t, t)``, ``x0_hat = x_t + t v``, ``L`` the loss,
``N`` the gradient normalisation, ``s`` the scale):

* ``"dps"``: ``g = dL(predictor(x0_hat(x_t))) / dx_t``, back-propagated through the velocity
  network (``integrate(grad="step")``); ``x_t <- x_t - s N(g)``; the step then uses the ``v``
  evaluated before the update: ``x_t' = x_t - s N(g) + (t - t') v`` (DPS's update after the
  sampler step, with the gradient taken at ``x_t``).
* ``"x0"`` (FlowChef-like, cheap): ``g = dL(predictor(x0_hat)) / dx0_hat`` with ``x0_hat`` detached
  (no backward pass through the velocity network; ``integrate(grad="none")``); the same update
  ``x_t <- x_t - s N(g)``, equivalently a velocity offset ``v <- v - s N(g) / (t - t')`` for Euler.

With Heun the corrector velocity is evaluated at the point made from the updated ``x_t``.
Outside the guided steps no graph is built. Trajectories are kept detached on the CPU.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import asdict, dataclass, field
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.flow.attribution import ThresholdRule, mask_from_map
from wsnodule_core.flow.predictors import two_class_logits
from wsnodule_core.flow.rectified_flow import (SamplingCancelled, VelocityField, clean_estimate, integrate,
                                               invert, partial_noise, time_grid)
from wsnodule_core.training.device import autocast

STARTS = ("invert", "noise")
RULES = ("dps", "x0")
METHODS = ("euler", "heun")
NORMALISATIONS = ("none", "l2")
TARGETS = ("no_nodule", "nodule")
LOSSES = ("bce", "log_prob", "logit")
REFERENCES = ("input", "unguided")

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool]


@dataclass(frozen=True)
class GuidanceConfig:
    """Every setting of :func:`guide`. ``t0``, ``guided_steps``, ``scale`` and ``rule`` default to the
    sweep's choice on validation patches (docs/flow_results.md: t0 0.3, K 3, scale 0.5, DPS).

    Parameters
    ----------
    t0
        Start time in (0, 1] of the return path (0 clean, 1 noise). Larger t0 lets guidance change
        more and reconstructs less faithfully.
    start
        How ``x_t0`` is reached: "invert" (deterministic ODE inversion 0 -> t0, ``invert_steps``
        steps, same integrator) or "noise" (``(1 - t0) x + t0 eps`` with eps seeded per patch).
    n_steps
        Steps of the return path t0 -> 0 (evenly spaced times).
    invert_steps
        Steps of the inversion; None: ``n_steps``.
    method
        Integrator of both paths: "euler" or "heun".
    guided_steps
        K: the first K steps of the return path are guided (0: no guidance).
    rule
        "dps" (gradient through the velocity network) or "x0" (gradient at the clean estimate).
    scale
        Step size ``s`` of each guided update (>= 0). With ``normalise="l2"`` it is the L2 norm of
        the change of ``x_t`` per guided step, per patch, in intensity units.
    normalise
        "l2": the gradient of each patch divided by its L2 norm (a zero gradient stays zero);
        "none": the raw gradient.
    target
        The class guidance pushes towards: "no_nodule" (segmentation) or "nodule".
    loss
        With ``u`` the "nodule" logit (its sign flipped for target "nodule"): "bce"
        (``softplus(u) = -log P(target)``, gradient vanishes once the target is reached), "log_prob"
        (``log sigmoid(u) = log P(other class)``) or "logit" (``u``). Summed over the batch, so
        each patch's gradient is independent of the others.
    clamp
        (low, high): the counterfactual is clipped to this intensity range; None: not clipped.
    reference
        What the counterfactual is compared with in ``difference``: "input" (``|x - x_cf|``, the
        paper's map) or "unguided" (``|x_unguided - x_cf|``, the same start integrated back
        without guidance; removes the reconstruction error at one more unguided pass).
    seed
        Seed of the "noise" start: patch i of a call uses ``seed + i`` unless ``seeds`` are given.
    amp
        Run the networks under CUDA autocast (float16); ignored on the CPU.
    """

    t0: float = 0.3
    start: str = "invert"
    n_steps: int = 20
    invert_steps: int | None = None
    method: str = "euler"
    guided_steps: int = 3
    rule: str = "dps"
    scale: float = 0.5
    normalise: str = "l2"
    target: str = "no_nodule"
    loss: str = "bce"
    clamp: tuple[float, float] | None = (0.0, 1.0)
    reference: str = "input"
    seed: int = 0
    amp: bool = False

    def __post_init__(self) -> None:
        choices = {"start": STARTS, "method": METHODS, "rule": RULES, "normalise": NORMALISATIONS,
                   "target": TARGETS, "loss": LOSSES, "reference": REFERENCES}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ModelConfigError(f"GuidanceConfig.{name} must be one of {allowed}, got "
                                       f"{getattr(self, name)!r}.")
        if not 0.0 < float(self.t0) <= 1.0:
            raise ModelConfigError(f"GuidanceConfig.t0 must lie in (0, 1] (0 is the clean image), got "
                                   f"{self.t0!r}.")
        if int(self.n_steps) < 1:
            raise ModelConfigError(f"GuidanceConfig.n_steps must be at least 1, got {self.n_steps!r}.")
        if self.invert_steps is not None and int(self.invert_steps) < 1:
            raise ModelConfigError(f"GuidanceConfig.invert_steps must be at least 1 (or None: n_steps), got "
                                   f"{self.invert_steps!r}.")
        if not 0 <= int(self.guided_steps) <= int(self.n_steps):
            raise ModelConfigError(f"GuidanceConfig.guided_steps must lie in [0, n_steps={self.n_steps}], "
                                   f"got {self.guided_steps!r}.")
        if not (math.isfinite(float(self.scale)) and float(self.scale) >= 0):
            raise ModelConfigError(f"GuidanceConfig.scale must be finite and >= 0, got {self.scale!r}.")
        if self.clamp is not None:
            low, high = (float(v) for v in self.clamp)
            if not high > low:
                raise ModelConfigError(f"GuidanceConfig.clamp must be (low, high) with high > low, or None; "
                                       f"got {self.clamp!r}.")
            object.__setattr__(self, "clamp", (low, high))
        if int(self.seed) < 0:
            raise ModelConfigError(f"GuidanceConfig.seed must be >= 0, got {self.seed!r}.")

    @property
    def n_invert_steps(self) -> int:
        return int(self.invert_steps if self.invert_steps is not None else self.n_steps)

    @property
    def return_times(self) -> tuple[float, ...]:
        """The ``n_steps + 1`` times of the return path, t0 down to 0."""
        return time_grid(float(self.t0), 0.0, int(self.n_steps))

    def to_dict(self) -> dict:
        data = asdict(self)
        data["clamp"] = list(self.clamp) if self.clamp is not None else None
        return data


@dataclass(frozen=True, eq=False)
class Trajectory:
    """The states of the return path: ``states[k]`` (CPU, detached) at ``times[k]``, t0 down to 0."""

    times: tuple[float, ...]
    states: list[torch.Tensor] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.states)


@dataclass(frozen=True, eq=False)
class GuidanceResult:
    """What :func:`guide` returns, on the CPU: ``counterfactual`` and ``difference`` ``[B, 1, D, H, W]``
    (``difference = |reference - counterfactual|``, the reference being the input unless
    ``config.reference == "unguided"``), P(nodule) of the input and of the counterfactual ``[B]``,
    the return-path trajectory (None unless asked) and the config."""

    counterfactual: torch.Tensor
    difference: torch.Tensor
    p_before: torch.Tensor
    p_after: torch.Tensor
    config: GuidanceConfig
    trajectory: Trajectory | None = None


# --- the predictor side ----------------------------------------------------------------------------


def nodule_logit(predictor: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """``[B]`` "nodule" logit of any predictor returning ``[B]``, ``[B, 1]`` or ``[B, 2]`` logits
    (two classes: class 1 minus class 0)."""
    logits = two_class_logits(predictor(x)).float()
    return logits[:, 1] - logits[:, 0]


def guidance_loss(logit: torch.Tensor, target: str = "no_nodule", loss: str = "bce") -> torch.Tensor:
    """The scalar loss guidance descends, summed over the batch (see :class:`GuidanceConfig`)."""
    u = logit if target == "no_nodule" else -logit
    if loss == "bce":
        return F.softplus(u).sum()
    if loss == "log_prob":
        return F.logsigmoid(u).sum()
    if loss == "logit":
        return u.sum()
    raise ModelConfigError(f"loss must be one of {LOSSES}, got {loss!r}.")


def _normalise(g: torch.Tensor, how: str) -> torch.Tensor:
    if how == "none":
        return g
    norm = g.flatten(1).norm(dim=1).reshape(-1, *([1] * (g.ndim - 1)))
    return g / norm.clamp_min(torch.finfo(g.dtype).tiny)


@contextlib.contextmanager
def _eval_mode(*modules):
    """Modules in eval mode for the duration (dropout off, norms frozen), restored afterwards."""
    states = [(m, m.training) for m in modules if isinstance(m, nn.Module)]
    for m, _ in states:
        m.eval()
    try:
        yield
    finally:
        for m, was_training in states:
            m.train(was_training)


@contextlib.contextmanager
def _frozen(*modules):
    """Weights that do not require grad for the duration (restored afterwards): gradients flow to the
    state only, and calls whose input needs no gradient (Heun's corrector) build no graph."""
    params = [p for m in modules if isinstance(m, nn.Module) for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _gradient(loss: torch.Tensor, wrt: torch.Tensor) -> torch.Tensor:
    """d loss / d wrt; zeros when the loss does not depend on it (e.g. a constant predictor)."""
    if not loss.requires_grad:
        return torch.zeros_like(wrt)
    (g,) = torch.autograd.grad(loss, wrt, allow_unused=True)
    return torch.zeros_like(wrt) if g is None else g


def _step_hook(predictor, config: GuidanceConfig, guided: int):
    """The ``step_fn`` of the guided steps (see the module docstring for the update)."""

    def loss_of(x0_hat: torch.Tensor) -> torch.Tensor:
        with autocast(x0_hat.device, config.amp):
            logit = nodule_logit(predictor, x0_hat)
        return guidance_loss(logit, config.target, config.loss)

    def step_fn(x: torch.Tensor, t: float, v: torch.Tensor, k: int):
        if k >= guided:
            return None
        if config.rule == "dps":  # x is a leaf that requires grad, v carries the network's graph
            g = _gradient(loss_of(clean_estimate(x, t, v)), x)
        else:
            with torch.enable_grad():
                x0_hat = clean_estimate(x, t, v).detach().requires_grad_(True)
                g = _gradient(loss_of(x0_hat), x0_hat)
        update = float(config.scale) * _normalise(g.detach().float(), config.normalise).to(x.dtype)
        return x.detach() - update, v.detach()

    return step_fn


@torch.no_grad()
def nodule_probability(predictor, x: torch.Tensor, amp: bool = False) -> torch.Tensor:
    """P(nodule) ``[B]`` (CPU float32) of a batch, no gradient."""
    with _eval_mode(predictor), autocast(x.device, amp):
        return torch.sigmoid(nodule_logit(predictor, x)).float().cpu()


# --- the start state ---------------------------------------------------------------------------------


def _check_batch(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != 5 or x.shape[1] != 1:
        shape = tuple(x.shape) if hasattr(x, "shape") else type(x).__name__
        raise ModelConfigError(f"guidance takes a tensor batch [B, 1, D, H, W], got {shape}.")


def patch_seeds(config: GuidanceConfig, n: int, seeds: Sequence[int] | None = None) -> list[int]:
    """The noise seed of each of ``n`` patches: ``seeds`` when given, else ``config.seed + i``."""
    if seeds is None:
        return [int(config.seed) + i for i in range(n)]
    seeds = [int(s) for s in seeds]
    if len(seeds) != n:
        raise ModelConfigError(f"{len(seeds)} seeds for {n} patches; give one seed per patch.")
    return seeds


def start_state(velocity_model: VelocityField, x0: torch.Tensor, config: GuidanceConfig, *,
                seeds: Sequence[int] | None = None, progress: Progress | None = None,
                cancel: Cancel | None = None) -> torch.Tensor:
    """``x_t0`` of a batch (on ``x0``'s device): ODE inversion or seeded partial noise (``config.start``).

    Noise is drawn per patch on the CPU from ``torch.Generator().manual_seed(seed_i)``
    (:func:`patch_seeds`), so a patch gets the same noise in any batch and on any device.
    """
    _check_batch(x0)
    if config.start == "invert":
        with _eval_mode(velocity_model):
            return invert(velocity_model, x0, float(config.t0), config.n_invert_steps, method=config.method,
                          use_amp=config.amp, progress=progress, cancel=cancel).x
    if cancel is not None and cancel():
        raise SamplingCancelled("guidance was cancelled before the start state was drawn.")
    states = [partial_noise(x0[i:i + 1], float(config.t0), torch.Generator().manual_seed(s))
              for i, s in enumerate(patch_seeds(config, len(x0), seeds))]
    return torch.cat(states) if states else x0.clone()


# --- guidance ----------------------------------------------------------------------------------------


def guide(velocity_model: VelocityField, predictor: Callable[[torch.Tensor], torch.Tensor],
          x0_batch: torch.Tensor, config: GuidanceConfig = GuidanceConfig(), *,
          progress: Progress | None = None, cancel: Cancel | None = None, keep_trajectory: bool = True,
          seeds: Sequence[int] | None = None, start: torch.Tensor | None = None) -> GuidanceResult:
    """The guided counterfactual of a batch of patches and its difference from the input.

    Parameters
    ----------
    velocity_model
        The frozen prior ``model(x, t) -> v`` (v = x0 - eps); put in eval mode for the call.
    predictor
        Any module mapping ``[B, 1, D, H, W]`` to logits ``[B]``, ``[B, 1]`` or ``[B, 2]``
        (class 1 = nodule); eval mode for the call; its weights get no gradient.
    x0_batch
        ``[B, 1, D, H, W]`` patches in the prior's intensity range, on the device the models run on.
    config
        The settings (:class:`GuidanceConfig`).
    progress, cancel
        ``progress(done, total)`` after each integration step (inversion, return path and the
        unguided reference path when asked); ``cancel()`` before each, True raises
        :class:`~wsnodule_core.flow.rectified_flow.SamplingCancelled`.
    keep_trajectory
        Keep the return path's ``n_steps + 1`` states (CPU) in ``result.trajectory``.
    seeds
        One noise seed per patch for ``start="noise"`` (default ``config.seed + i``).
    start
        A precomputed ``x_t0`` (from :func:`start_state` with the same t0, start and seeds): skips
        the inversion (the sweep shares it between settings).

    Returns
    -------
    GuidanceResult
        Everything on the CPU, detached.
    """
    _check_batch(x0_batch)
    guided = int(config.guided_steps) if float(config.scale) > 0 else 0
    n_ret = int(config.n_steps)
    n_start = config.n_invert_steps if (start is None and config.start == "invert") else 0
    total = n_start + n_ret + (n_ret if config.reference == "unguided" else 0)
    done = [0]

    def tick(_k: int, _n: int) -> None:
        done[0] += 1
        if progress is not None:
            progress(done[0], total)

    times = config.return_times
    p_before = nodule_probability(predictor, x0_batch, config.amp)
    with _eval_mode(velocity_model, predictor), _frozen(velocity_model, predictor):
        if start is None:
            x = start_state(velocity_model, x0_batch, config, seeds=seeds, progress=tick, cancel=cancel)
        else:
            if tuple(start.shape) != tuple(x0_batch.shape):
                raise ModelConfigError(f"start has shape {tuple(start.shape)}, the batch "
                                       f"{tuple(x0_batch.shape)}; give the start state of this batch.")
            x = start.to(device=x0_batch.device, dtype=x0_batch.dtype)
        x_start = x
        states: list[torch.Tensor] | None = [x.detach().cpu()] if keep_trajectory else None
        options = dict(method=config.method, use_amp=config.amp, progress=tick, cancel=cancel,
                       return_trajectory=keep_trajectory)
        if guided:
            part = integrate(velocity_model, x, times=times[:guided + 1],
                             step_fn=_step_hook(predictor, config, guided),
                             grad="step" if config.rule == "dps" else "none", **options)
            x = part.x.detach()
            if states is not None:
                states += part.trajectory[1:]
        if guided < n_ret:
            part = integrate(velocity_model, x, times=times[guided:], **options)
            x = part.x
            if states is not None:
                states += part.trajectory[1:]
        reference = x0_batch
        if config.reference == "unguided":
            reference = integrate(velocity_model, x_start, times=times, method=config.method,
                                  use_amp=config.amp, progress=tick, cancel=cancel).x
            if config.clamp is not None:
                reference = reference.clamp(*config.clamp)
    x = x.detach()
    if config.clamp is not None:
        x = x.clamp(*config.clamp)
    p_after = nodule_probability(predictor, x, config.amp)
    counterfactual = x.float().cpu()
    difference = (reference.detach().float().cpu() - counterfactual).abs()
    trajectory = Trajectory(times, states) if states is not None else None
    return GuidanceResult(counterfactual, difference, p_before, p_after, config, trajectory)


# --- the mask ------------------------------------------------------------------------------------------


def difference_mask(difference, lungs=None, rule: ThresholdRule = ThresholdRule(), *,
                    floor: float = 0.0) -> np.ndarray:
    """Binary masks from ``|x - x_cf|``, thresholded inside the lungs.

    Parameters
    ----------
    difference
        ``[B, 1, D, H, W]``, ``[B, D, H, W]`` or ``[D, H, W]`` (tensor or array).
    lungs
        The lung crop of the same spatial shape (None: the whole patch counts as lung).
    rule
        :class:`~wsnodule_core.flow.attribution.ThresholdRule`, applied by
        :func:`~wsnodule_core.flow.attribution.mask_from_map` exactly as to the attribution
        baselines ("fraction" of the maximum in the lungs, "otsu" or "top_percent"); all three are
        invariant to the map's scale, so the difference is not rescaled.
    floor
        Absolute floor in intensity units (0.01 = 20 HU over the [-1000, 1000] window): smaller
        differences are set to 0 first, so reconstruction noise alone gives an empty mask.

    Returns
    -------
    numpy.ndarray
        bool, ``(B, D, H, W)`` or ``(D, H, W)`` (the channel axis dropped).
    """
    values = difference.detach().float().cpu().numpy() if isinstance(difference, torch.Tensor) \
        else np.asarray(difference, np.float32)
    if values.ndim == 5:
        if values.shape[1] != 1:
            raise ModelConfigError(f"difference must have one channel, got shape {values.shape}.")
        values = values[:, 0]
    if not float(floor) >= 0:
        raise ModelConfigError(f"floor must be >= 0, got {floor!r}.")
    values = np.where(values >= float(floor), values, 0.0).astype(np.float32)
    if lungs is not None:
        lungs = np.asarray(lungs.detach().cpu() if isinstance(lungs, torch.Tensor) else lungs, bool)
        if lungs.ndim == values.ndim + 1 and lungs.shape[1] == 1:
            lungs = lungs[:, 0]
    return mask_from_map(values, lungs, rule)
