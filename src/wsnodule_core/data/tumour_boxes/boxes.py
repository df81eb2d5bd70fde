"""Box types: a 2D box on one slice of a series, a 3D box in world coordinates, a series' boxes.

Conventions (see ``docs/data.md``, "Tumour boxes"):

* a slice box is in voxel indices of its series' z-sorted :class:`~wsnodule_core.io.volume.Volume`:
  slice ``z`` and in-plane corners ``(row, column)``, both inclusive (the pixels on the box's edge are
  inside it);
* a world box is axis-aligned in the patient LPS frame, corners ``lo`` and ``hi`` as world ``(x, y, z)``
  millimetres, and spans the *outer faces* of the voxels it came from: a one-slice box is one slice
  thick, a one-pixel box one pixel wide. Put back on its own grid it gives exactly those voxels.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import numpy as np

from wsnodule_core.errors import BoxFileError
from wsnodule_core.io.volume import Volume

Triple = tuple[float, float, float]
Pair = tuple[int, int]


@dataclass(frozen=True)
class SliceBox:
    """A 2D box on slice ``z`` of a series: rows ``lo_yx[0]..hi_yx[0]``, columns ``lo_yx[1]..hi_yx[1]``
    (inclusive), from the annotation file ``source`` (named by ``sop_uid``), class ``name``."""

    sop_uid: str
    z: int
    lo_yx: Pair
    hi_yx: Pair
    name: str = ""
    source: str = ""


@dataclass(frozen=True)
class WorldBox:
    """An axis-aligned box in the patient LPS frame: corners ``lo <= hi``, world ``(x, y, z)`` mm.

    ``slices`` are the z indices of the boxed slices in the series it came from (empty when it did not
    come from one); ``name`` the annotation's class names (Lung-PET-CT-Dx: A, B, E, G for the histology).
    """

    lo: Triple
    hi: Triple
    name: str = ""
    slices: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        lo = np.asarray(self.lo, float).reshape(-1)
        hi = np.asarray(self.hi, float).reshape(-1)
        if lo.size != 3 or hi.size != 3 or not np.all(np.isfinite(lo)) or not np.all(np.isfinite(hi)):
            raise BoxFileError(f"a world box needs two finite corners (x, y, z) mm, got {self.lo}, {self.hi}.")
        if np.any(lo > hi):
            raise BoxFileError(f"world box corners lo {tuple(lo)} exceed hi {tuple(hi)} on some axis; lo is the "
                               "smaller (x, y, z) corner: swap them.")
        object.__setattr__(self, "lo", tuple(float(v) for v in lo))
        object.__setattr__(self, "hi", tuple(float(v) for v in hi))
        object.__setattr__(self, "slices", tuple(int(z) for z in self.slices))

    @property
    def centre(self) -> Triple:
        return tuple((a + b) / 2 for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]

    @property
    def size_mm(self) -> Triple:
        return tuple(b - a for a, b in zip(self.lo, self.hi))  # type: ignore[return-value]

    def corners(self) -> np.ndarray:
        """The eight corners, ``(8, 3)`` world ``(x, y, z)``."""
        return np.array(list(product(*zip(self.lo, self.hi))), float)

    def contains(self, points_xyz: Sequence[float] | np.ndarray) -> np.ndarray | bool:
        """Whether world points ``(x, y, z)`` (one or ``(n, 3)``) lie inside the box (faces included)."""
        pts = np.asarray(points_xyz, float)
        inside = np.all((pts >= self.lo) & (pts <= self.hi), axis=-1)
        return bool(inside) if inside.ndim == 0 else inside


@dataclass(frozen=True)
class SeriesBoxes:
    """The boxes of one series: its slice boxes and the 3D tumour boxes they form.

    ``shape`` is the series' grid ``(z, y, x)``; ``tumours`` are numbered 1..n in this order wherever they
    become annotations (``nodule`` of :class:`~wsnodule_core.pw4medseg.annotations.BoxAnnotation`).
    """

    subject: str
    series_uid: str
    folder: Path
    shape: tuple[int, int, int]
    slice_boxes: tuple[SliceBox, ...]
    tumours: tuple[WorldBox, ...]

    @property
    def boxed_slices(self) -> tuple[int, ...]:
        return tuple(sorted({b.z for b in self.slice_boxes}))


def index_box_to_world(volume: Volume, lo_zyx: Sequence[int], hi_zyx: Sequence[int], name: str = "",
                       slices: Sequence[int] = ()) -> WorldBox:
    """The world box covering voxels ``lo_zyx..hi_zyx`` (inclusive) of ``volume``'s grid: the outer faces
    of those voxels (half a voxel beyond their centres), through the volume's own ``index_to_world``."""
    lo = np.asarray(lo_zyx, float) - 0.5
    hi = np.asarray(hi_zyx, float) + 0.5
    corners = volume.index_to_world(np.array(list(product(*zip(lo, hi))), float))
    return WorldBox(tuple(corners.min(axis=0)), tuple(corners.max(axis=0)), name, tuple(slices))


def contiguous_runs(slices: Sequence[int]) -> list[list[int]]:
    """Sorted slice indices split where a slice is skipped: ``[3, 4, 5, 9]`` -> ``[[3, 4, 5], [9]]``."""
    runs: list[list[int]] = []
    for z in sorted({int(s) for s in slices}):
        if runs and z == runs[-1][-1] + 1:
            runs[-1].append(z)
        else:
            runs.append([z])
    return runs


def tumour_boxes(volume: Volume, slice_boxes: Sequence[SliceBox]) -> tuple[WorldBox, ...]:
    """One world box per run of contiguous boxed slices: z from the run's first to last slice, in-plane the
    union of the run's slice boxes (in ``volume``'s grid, the series the boxes were drawn on)."""
    out: list[WorldBox] = []
    for run in contiguous_runs([b.z for b in slice_boxes]):
        members = [b for b in slice_boxes if b.z in run]
        lo_yx = np.min([b.lo_yx for b in members], axis=0)
        hi_yx = np.max([b.hi_yx for b in members], axis=0)
        names = "+".join(sorted({b.name for b in members if b.name}))
        out.append(index_box_to_world(volume, (run[0], *lo_yx), (run[-1], *hi_yx), names, run))
    return tuple(out)
