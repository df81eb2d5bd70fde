"""The one CT intensity window: Hounsfield units over ``(low, high)`` onto [0, 1] or [-1, 1], clipped.

Each method names its window here instead of re-implementing the mapping.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from wsnodule_core.errors import ModelConfigError

#: The NAM slice classifier's window (and the U-Net baseline's, trained on the same slices).
NAM_WINDOW = (-1200.0, 600.0)
#: The 3D NAM patches' window (also PW4MedSeg's ``"ct"`` normalisation default).
NAM3D_WINDOW = (-1000.0, 400.0)
#: The flow prior's and predictors' window (and MAISI's).
FLOW_WINDOW = (-1000.0, 1000.0)
#: Viewing windows (what a reader looks at, not what a network is fed): lung (level -600 HU,
#: width 1500 HU) and mediastinal (level 40 HU, width 400 HU), as ``(low, high)`` HU.
LUNG_VIEW_WINDOW = (-1350.0, 150.0)
MEDIASTINAL_VIEW_WINDOW = (-160.0, 240.0)
VIEW_WINDOWS = {"lung": LUNG_VIEW_WINDOW, "mediastinal": MEDIASTINAL_VIEW_WINDOW}
#: Air: what lies outside a CT when a patch or grid runs past it.
AIR_HU = -1024.0
#: Output ranges of :func:`apply_window`: MAISI's [0, 1] and the symmetric [-1, 1].
RANGES = {"unit": (0.0, 1.0), "symmetric": (-1.0, 1.0)}


def level_width(window: Sequence[float]) -> tuple[float, float]:
    """A ``(low, high)`` HU window as radiologists give it: ``(level, width)``.

    Examples
    --------
    >>> level_width(LUNG_VIEW_WINDOW)
    (-600.0, 1500.0)
    """
    lo, hi = _bounds(window)
    return (lo + hi) / 2.0, hi - lo


def _bounds(window: Sequence[float]) -> tuple[float, float]:
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ModelConfigError(f"window must be (low, high) HU with high > low, got {tuple(window)}.")
    return lo, hi


def _is_tensor(value) -> bool:
    return type(value).__module__.startswith("torch") and hasattr(value, "clamp")


def apply_window(hu, window: Sequence[float], *, out_range: str = "unit"):
    """HU over ``window`` mapped linearly onto ``out_range`` (``"unit"`` [0, 1] or ``"symmetric"``
    [-1, 1]), clipped.

    numpy arrays and numbers give float32 numpy (of the same shape); a torch tensor gives a float
    tensor on its device.

    Examples
    --------
    >>> apply_window(np.array([-1200.0, -300.0, 600.0]), NAM_WINDOW)
    array([0. , 0.5, 1. ], dtype=float32)
    """
    lo, hi = _bounds(window)
    if out_range not in RANGES:
        raise ModelConfigError(f"out_range must be one of {list(RANGES)}, got {out_range!r}.")
    a, b = RANGES[out_range]
    if _is_tensor(hu):
        unit = ((hu.float() - lo) / (hi - lo)).clamp_(0.0, 1.0)
        return unit if (a, b) == (0.0, 1.0) else unit * (b - a) + a
    array = np.asarray(hu, dtype=np.float32)
    unit = (array - np.float32(lo)) / np.float32(hi - lo)
    unit = np.clip(unit, 0.0, 1.0, out=unit) if unit.ndim else np.float32(np.clip(unit, 0.0, 1.0))
    if (a, b) != (0.0, 1.0):
        unit = unit * np.float32(b - a) + np.float32(a)
    return np.asarray(unit, np.float32)


def invert_window(values, window: Sequence[float], *, out_range: str = "unit"):
    """Window values back to HU (the inverse of :func:`apply_window` inside the window; clipped
    values stay at the window's ends). numpy -> float32 numpy, tensor -> tensor."""
    lo, hi = _bounds(window)
    if out_range not in RANGES:
        raise ModelConfigError(f"out_range must be one of {list(RANGES)}, got {out_range!r}.")
    a, b = RANGES[out_range]
    if _is_tensor(values):
        unit = values if (a, b) == (0.0, 1.0) else (values - a) / (b - a)
        return unit * (hi - lo) + lo
    unit = np.asarray(values, np.float32)
    if (a, b) != (0.0, 1.0):
        unit = (unit - np.float32(a)) / np.float32(b - a)
    return unit * np.float32(hi - lo) + np.float32(lo)
