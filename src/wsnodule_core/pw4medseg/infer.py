"""PW4MedSeg inference: the mean and spread of K stochastic sliding-window passes, on the input grid.

The volume is resampled to the model's training grid (``PwTrainConfig.spacing_mm``) and normalised as
in training; each of the ``passes`` passes is a MONAI ``sliding_window_inference`` over windows of the
training crop size (Gaussian blending of the window probabilities) with the attention logits sampled
(the paper: K = 6). ``probability`` is the mean over passes, ``uncertainty`` their standard deviation,
both put back on the input volume's grid (linear), and ``mask`` the probability thresholded.
:class:`~wsnodule_core.segmentation.PwSegmenter` makes a checkpoint a segmenter.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

from wsnodule_core.errors import ModelConfigError, SegmentationCancelled
from wsnodule_core.io.volume import Volume
from wsnodule_core.image.resample import resample_array
from wsnodule_core.pw4medseg.config import PwTrainConfig
from wsnodule_core.pw4medseg.preprocess import model_grid
from wsnodule_core.training.device import amp_enabled, autocast, device_of


@dataclass(frozen=True, eq=False)
class Prediction:
    """``probability`` (mean over passes) and ``uncertainty`` (their standard deviation), float32 Volumes
    on the input volume's grid; ``mask`` uint8 (probability >= ``threshold``) on the same grid."""

    probability: Volume
    uncertainty: Volume
    mask: Volume
    passes: int
    threshold: float


def count_windows(shape: Sequence[int], roi: Sequence[int], overlap: float) -> int:
    """Number of windows MONAI's sliding window visits on an image of ``shape`` (at least ``roi``)."""
    total = 1
    for n, r in zip(shape, roi):
        interval = r if n == r else max(int(r * (1 - overlap)), 1)
        total *= 1 if n <= r else math.ceil((n - r) / interval) + 1
    return total


def mc_sliding_window(model: torch.nn.Module, array: np.ndarray, roi: Sequence[int], *, passes: int = 6,
                      overlap: float = 0.25, batch_size: int = 2, stochastic: bool = True,
                      device: torch.device | str | None = None, fill: float | None = None,
                      seed: int | None = None, use_amp: bool = False,
                      progress: Callable[[int, int], None] | None = None,
                      cancel: Callable[[], bool] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation (float32, ``array``'s shape) of the sigmoid over ``passes`` sliding-
    window passes of ``model`` on a normalised ``array`` (already on the model's grid).

    The array is padded with ``fill`` (default its minimum) up to ``roi`` where smaller. ``stochastic``
    False runs one deterministic pass (the spread is then 0). ``seed`` draws the samples from a private
    generator state (the global torch RNG is left as it was). ``progress(done, total)`` counts windows
    over all passes; ``cancel()`` is polled before each batch of windows.
    """
    from monai.inferers import sliding_window_inference

    if passes < 1:
        raise ModelConfigError(f"passes must be >= 1, got {passes}.")
    if not 0 <= overlap < 1 or batch_size < 1:
        raise ModelConfigError(f"overlap must lie in [0, 1) and batch_size be >= 1, got {overlap}, "
                               f"{batch_size}.")
    device = torch.device(device) if device is not None else device_of(model)
    roi = tuple(int(r) for r in roi)
    shape = array.shape
    pad = [(0, max(r - n, 0)) for n, r in zip(shape, roi)]
    padded = np.pad(np.asarray(array, np.float32), pad, constant_values=float(array.min()) if fill is None
                    else float(fill))
    runs = passes if stochastic else 1
    total = runs * count_windows(padded.shape, roi, overlap)
    done = 0
    x = torch.from_numpy(padded)[None, None].to(device)

    def predictor(window: torch.Tensor) -> torch.Tensor:
        nonlocal done
        if cancel is not None and cancel():
            raise SegmentationCancelled("the PW4MedSeg prediction was cancelled before it finished; nothing "
                                        "was returned. Run it again to get a result.")
        with autocast(device, use_amp):
            logits = model(window, stochastic=stochastic)
        done += int(window.shape[0])
        if progress is not None:
            progress(min(done, total), total)
        return torch.sigmoid(logits.float())

    was_training = model.training
    model.eval()
    mean = np.zeros(padded.shape, np.float32)  # Welford: mean and summed squared deviations, float32
    squares = np.zeros(padded.shape, np.float32)
    fork = torch.random.fork_rng(devices=[device] if device.type == "cuda" else [], enabled=seed is not None)
    try:
        with fork, torch.inference_mode():
            if seed is not None:
                torch.manual_seed(int(seed))
            for k in range(1, runs + 1):
                if cancel is not None and cancel():
                    raise SegmentationCancelled("the PW4MedSeg prediction was cancelled between passes; "
                                                "nothing was returned. Run it again to get a result.")
                prob = sliding_window_inference(x, roi, batch_size, predictor, overlap=overlap,
                                                mode="gaussian", padding_mode="replicate")
                p = prob[0, 0].float().cpu().numpy()
                delta = p - mean
                mean += delta / k
                squares += delta * (p - mean)
    finally:
        model.train(was_training)
    std = np.sqrt(np.maximum(squares / runs, 0.0))
    crop = tuple(slice(0, n) for n in shape)
    return (np.clip(mean[crop], 0.0, 1.0).astype(np.float32), std[crop].astype(np.float32))


def predict_volume(model: torch.nn.Module, volume: Volume, config: PwTrainConfig | dict, *, passes: int = 6,
                   overlap: float = 0.25, batch_size: int = 2, threshold: float | None = None,
                   stochastic: bool = True, seed: int | None = None, device: torch.device | str | None = None,
                   progress: Callable[[int, int], None] | None = None,
                   cancel: Callable[[], bool] | None = None) -> Prediction:
    """Segment ``volume`` with a trained PW4MedSeg model.

    Parameters
    ----------
    model
        A :class:`~wsnodule_core.pw4medseg.model.ProbabilisticUNETR` (e.g. from
        :func:`~wsnodule_core.pw4medseg.config.load_pw4medseg`); its training flag is restored afterwards.
    volume
        The image (HU for ``intensity="ct"``; any units for ``"zscore"``/``"percentile"``).
    config
        The run's :class:`PwTrainConfig` (or its dict): grid, normalisation and window size.
    passes
        K stochastic passes (the paper: 6); ``stochastic=False`` runs one deterministic pass.
    overlap, batch_size
        Sliding-window overlap and windows per forward pass.
    threshold
        Probability at or above which a voxel is in ``mask``; None: ``config.threshold`` (from
        :func:`~wsnodule_core.pw4medseg.config.load_pw4medseg`: the one chosen on the validation cases).
    seed
        Draw the samples from this seed (reproducible; the global RNG is untouched); None: global RNG.
    device
        Where the windows run (the model is moved there); default the model's device.
    progress, cancel
        ``progress(done, total)`` over windows of all passes; ``cancel()`` polled before each batch of
        windows and each pass, True raises :class:`~wsnodule_core.errors.SegmentationCancelled`.
    """
    if isinstance(config, dict):
        config = PwTrainConfig.from_dict(config)
    threshold = config.threshold if threshold is None else threshold
    if not 0 < threshold < 1:
        raise ModelConfigError(f"threshold must lie in (0, 1), got {threshold}.")
    if device is not None:
        model.to(torch.device(device))
    run_device = device_of(model)
    grid = model_grid(volume, config.spacing_mm)
    image = config.normalise(grid.array)
    mean, std = mc_sliding_window(model, image, config.crop_size, passes=passes, overlap=overlap,
                                  batch_size=batch_size, stochastic=stochastic, device=run_device, seed=seed,
                                  use_amp=amp_enabled(run_device, config.amp), progress=progress,
                                  cancel=cancel)
    if grid is not volume:
        mean = np.clip(resample_array(mean, grid.spacing, volume.spacing, shape=volume.shape), 0.0, 1.0)
        std = np.maximum(resample_array(std, grid.spacing, volume.spacing, shape=volume.shape), 0.0)
    mean, std = mean.astype(np.float32), std.astype(np.float32)
    return Prediction(volume.with_array(mean), volume.with_array(std),
                      volume.with_array((mean >= threshold).astype(np.uint8)), passes if stochastic else 1,
                      float(threshold))
