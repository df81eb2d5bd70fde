"""PW4MedSeg preprocessing: the model's grid and the network input's intensities.

Image, target, confidence, ground truth and lungs are resampled to the run's ``spacing_mm`` (the
paper: 1 mm isotropic) through :mod:`wsnodule_core.image.resample` (voxel footprints keep their
outer edge, edges repeated) and the image normalised (:func:`normalise_intensity`).
"""

from __future__ import annotations

import numpy as np

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.image.resample import resample_to_spacing
from wsnodule_core.image.window import NAM3D_WINDOW, apply_window
from wsnodule_core.io.volume import Volume

INTENSITY_MODES = ("ct", "zscore", "percentile")


def normalise_intensity(array: np.ndarray, mode: str = "ct", *,
                        window: tuple[float, float] = NAM3D_WINDOW,
                        percentiles: tuple[float, float] = (0.5, 99.5),
                        mask: np.ndarray | None = None) -> np.ndarray:
    """Network input (float32) from raw intensities.

    ``"ct"``: Hounsfield units, ``window`` (lo, hi) mapped linearly to [0, 1] and clipped
    (:func:`~wsnodule_core.image.window.apply_window`); ``"zscore"``: ``(a - mean) / std`` (clipped to
    +-5); ``"percentile"``: the ``percentiles`` (lo, hi) mapped to [0, 1] and clipped. The last two
    assume nothing about the units (MRI-like input: any positive scale and offset give the same
    result); their statistics come from ``mask`` when given.
    """
    if mode == "ct":
        return apply_window(array, window)
    a = np.asarray(array, np.float32)
    values = a[np.asarray(mask, bool)] if mask is not None and np.any(mask) else a.reshape(-1)
    if mode == "zscore":
        mean, std = float(values.mean(dtype=np.float64)), float(values.std(dtype=np.float64))
        return np.clip((a - mean) / (std if std > 0 else 1.0), -5.0, 5.0).astype(np.float32)
    if mode == "percentile":
        lo, hi = (float(v) for v in np.percentile(values, percentiles))
        return np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0.0, 1.0).astype(np.float32)
    raise ModelConfigError(f"intensity normalisation must be one of {INTENSITY_MODES}, got {mode!r}.")


def model_grid(volume: Volume, spacing_mm: tuple[float, float, float] | None) -> Volume:
    """``volume`` (float32, linear) on the training grid: same extent and direction at ``spacing_mm``
    (the volume itself when it is already there)."""
    if spacing_mm is None or np.allclose(spacing_mm, volume.spacing, atol=1e-6):
        return volume
    return resample_to_spacing(volume, spacing_mm, extrapolate=True)
