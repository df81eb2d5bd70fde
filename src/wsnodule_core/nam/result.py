"""What a NAM/R-NAM segmentation of a volume returns (whole slices or tiles): its masks, maps and candidates."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from wsnodule_core.io.volume import Volume
from wsnodule_core.nam.segment_config import NamConfig


@dataclass(frozen=True, eq=False)
class CandidateInfo:
    """One candidate R_j of a nodule slice: its label in ``NamSegmentation.candidates`` on that
    slice, its area (network pixels), its eq. 4 score and its R-NAM on the input slice grid (None
    when over ``config.max_kept_rnams``)."""

    label: int
    area_px: int
    score: float
    rnam: np.ndarray | None


@dataclass(frozen=True, eq=False)
class SliceCandidates:
    """The candidates of nodule slice ``z`` and the chosen ones (labels; one per scope)."""

    z: int
    probability: float
    candidates: tuple[CandidateInfo, ...]
    chosen: tuple[int, ...]


@dataclass(frozen=True, eq=False)
class NamSegmentation:
    """The result of :func:`segment_volume`, every volume on the input volume's grid.

    ``fine`` and ``coarse`` are int32 label volumes (one label per 3D-linked nodule); ``nam`` and
    ``multi_nam`` float32 (``multi_nam`` None without a multi-GAP model; 0 on slices that are not
    nodule slices); ``scope`` uint8 (1 inside the final scopes C, 2 inside the 1-GAP scope C1 but
    outside C: only with a multi-GAP model); ``candidates`` uint16 (per slice
    1..n, as in ``slices``); ``probability`` and ``is_nodule`` per slice.
    """

    fine: Volume
    coarse: Volume
    probability: np.ndarray
    is_nodule: np.ndarray
    nam: Volume
    multi_nam: Volume | None
    scope: Volume
    candidates: Volume
    slices: tuple[SliceCandidates, ...]
    config: NamConfig

    @property
    def n_nodules(self) -> int:
        return int(self.fine.array.max()) if self.fine.array.size else 0
