"""Is a volume's voxel spacing one the model can segment? A single slice cannot be; very thick or
very anisotropic slices, or pixels far coarser than the model's training spacing, get a warning."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from typing import Any

from wsnodule_core.errors import SpacingWarning, UnsuitableVolumeError
from wsnodule_core.io.volume import Volume

MAX_SLICE_STEP_MM = 5.0
"""Slices further apart than this are thicker than the chest CT the methods are trained on (LIDC: <= 3 mm)."""
MAX_ANISOTROPY = 8.0
"""Slice step over pixel size above which nodules are a few slices of a long column of voxels."""
COARSER_FACTOR = 2.0
"""Pixels this many times coarser than the model's training spacing lose what the model learned to see."""


def training_spacing(checkpoint: str | os.PathLike) -> float | tuple[float, ...] | None:
    """The spacing (mm) a checkpoint's model was trained at: the first ``*spacing_mm`` value of its
    training or model configuration; None when it trained on the scans' own spacing."""
    from wsnodule_core.training.checkpoint import load_checkpoint

    saved = load_checkpoint(checkpoint, mmap=True)
    return _find_spacing(saved.train_config) or _find_spacing(saved.model_config)


def _find_spacing(config: Mapping[str, Any]) -> float | tuple[float, ...] | None:
    for key, value in config.items():
        if isinstance(value, Mapping):
            if (found := _find_spacing(value)) is not None:
                return found
        elif key.endswith("spacing_mm") and value is not None:
            return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else float(value)
    return None


def _mm(value: float | tuple[float, ...]) -> str:
    if isinstance(value, tuple):
        return " x ".join(f"{v:g}" for v in value) + " mm"
    return f"{value:g} mm"


def check_segmentation_spacing(volume: Volume, trained_mm: float | tuple[float, ...] | None) -> None:
    """Refuse a single slice (:class:`UnsuitableVolumeError`); warn (:class:`SpacingWarning`) when the
    slices are thicker than :data:`MAX_SLICE_STEP_MM` or :data:`MAX_ANISOTROPY` times the pixel size, or
    the pixels are :data:`COARSER_FACTOR` times coarser than the model's training spacing ``trained_mm``."""
    where = volume.metadata.source_path or "the volume"
    trained = ("the scans' own spacing (CT of slices up to "
               f"{MAX_SLICE_STEP_MM:g} mm)" if trained_mm is None else _mm(trained_mm))
    if volume.shape[0] < 2:
        raise UnsuitableVolumeError(
            f"{where} is a single 2D slice; the methods segment 3D chest CT (lungs and nodules across slices, "
            f"model trained at {trained}). Give the whole series."
        )
    step, row, col = volume.spacing
    pixel = min(row, col)
    found = []
    if step > MAX_SLICE_STEP_MM or step > MAX_ANISOTROPY * pixel:
        found.append(f"its slices are {step:g} mm apart with {row:g} x {col:g} mm pixels")
    if trained_mm is not None:
        finest = min(trained_mm) if isinstance(trained_mm, tuple) else trained_mm
        if max(row, col) > COARSER_FACTOR * finest:
            found.append(f"its pixels ({row:g} x {col:g} mm) are much coarser than the model's")
    if found:
        warnings.warn(SpacingWarning(
            f"{where}: {' and '.join(found)}, far from the model's training spacing ({trained}); small "
            "nodules may be missed or misshapen. Prefer a reconstruction with thinner slices."
        ), stacklevel=2)
