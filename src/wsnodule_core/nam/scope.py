"""The R-NAM screening scope C: the most prominent blob of a nodule activation map (NAM).

The paper (Feng et al., MICCAI 2017, section 2.2) defines C as "the most prominent blob in the NAM
processed via watershed" and gives no further detail. Here: smooth the NAM, keep where it exceeds
``threshold_fraction`` of its maximum, put one marker per local maximum, run a watershed on -NAM, and
rank the basins by prominence (peak height above the threshold, or the integral of the NAM above the
threshold over the basin). The scope of a blob is its basin restricted to where the NAM exceeds
``scope_fraction`` of the blob's own peak. See ``docs/nam_segmentation.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from wsnodule_core.errors import NamSegmentationError


@dataclass(frozen=True)
class ScopeParams:
    """Parameters of the blob analysis of a NAM (all in pixels of the NAM's grid).

    Attributes
    ----------
    smooth_sigma_px
        Gaussian smoothing of the NAM before the watershed (0 = none).
    threshold_fraction
        Blobs live where the smoothed NAM exceeds this fraction of its maximum.
    peak_min_distance_px
        Minimum distance between two watershed markers (local maxima).
    prominence
        ``"peak"``: peak height above the threshold; ``"integral"``: sum of the NAM above the
        threshold over the basin.
    scope_fraction
        The scope C is the basin where the NAM exceeds this fraction of the blob's peak.
    """

    smooth_sigma_px: float = 2.0
    threshold_fraction: float = 0.2
    peak_min_distance_px: int = 8
    prominence: str = "peak"
    scope_fraction: float = 0.3

    def __post_init__(self) -> None:
        if self.prominence not in ("peak", "integral"):
            raise NamSegmentationError(
                f"ScopeParams.prominence must be 'peak' or 'integral', got {self.prominence!r}."
            )
        for name in ("threshold_fraction", "scope_fraction"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise NamSegmentationError(f"ScopeParams.{name} must be in [0, 1), got {value}.")
        if self.smooth_sigma_px < 0 or self.peak_min_distance_px < 1:
            raise NamSegmentationError(
                "ScopeParams: smooth_sigma_px must be >= 0 and peak_min_distance_px >= 1, got "
                f"{self.smooth_sigma_px} and {self.peak_min_distance_px}."
            )


@dataclass(frozen=True, eq=False)
class Blob:
    """One watershed basin of a NAM.

    ``peak_yx`` is the position of its maximum, ``peak`` the (smoothed) NAM there, ``prominence``
    its rank key, ``basin`` the whole basin above the threshold and ``scope`` the screening scope.
    """

    peak_yx: tuple[int, int]
    peak: float
    prominence: float
    basin: np.ndarray
    scope: np.ndarray

    @property
    def area(self) -> int:
        return int(self.scope.sum())


def find_blobs(nam: np.ndarray, params: ScopeParams = ScopeParams()) -> list[Blob]:
    """All blobs of ``nam`` (2D), most prominent first; empty when the NAM has no positive value."""
    nam = np.asarray(nam, dtype=np.float64)
    if nam.ndim != 2:
        raise NamSegmentationError(f"find_blobs: expected a 2D NAM, got shape {nam.shape}.")
    smooth = ndimage.gaussian_filter(nam, params.smooth_sigma_px) if params.smooth_sigma_px > 0 else nam
    top = float(smooth.max())
    if not np.isfinite(top) or top <= 0.0:
        return []
    threshold = params.threshold_fraction * top
    above = smooth > threshold
    peaks = peak_local_max(
        smooth, min_distance=int(params.peak_min_distance_px), threshold_abs=threshold,
        labels=above.astype(np.int32), exclude_border=False,
    )
    if len(peaks) == 0:  # a plateau: one marker at the maximum
        peaks = np.array([np.unravel_index(int(np.argmax(smooth)), smooth.shape)])
    markers = np.zeros(smooth.shape, dtype=np.int32)
    markers[peaks[:, 0], peaks[:, 1]] = np.arange(1, len(peaks) + 1)
    basins = watershed(-smooth, markers, mask=above)
    index = np.arange(1, len(peaks) + 1)
    heights = ndimage.maximum(smooth, basins, index)
    if params.prominence == "peak":
        keys = np.asarray(heights) - threshold
    else:
        keys = np.asarray(ndimage.sum(smooth - threshold, basins, index))
    blobs = []
    for label, height, key in zip(index, heights, keys):
        basin = basins == label
        if not basin.any():
            continue
        where = np.where(basin, smooth, -np.inf)
        peak_yx = np.unravel_index(int(np.argmax(where)), smooth.shape)
        scope = basin & (smooth > params.scope_fraction * float(height))
        blobs.append(Blob((int(peak_yx[0]), int(peak_yx[1])), float(height), float(key), basin, scope))
    blobs.sort(key=lambda b: -b.prominence)
    return blobs


def screening_scopes(
    nam: np.ndarray, params: ScopeParams = ScopeParams(), *, top_k: int = 1, min_ratio: float = 0.0
) -> list[Blob]:
    """The ``top_k`` most prominent blobs of ``nam``.

    Blobs after the first are kept only when their prominence is at least ``min_ratio`` times the
    first's (the two-nodule mode uses this to skip a weak second blob).
    """
    if top_k < 1:
        raise NamSegmentationError(f"screening_scopes: top_k must be >= 1, got {top_k}.")
    blobs = find_blobs(nam, params)
    if not blobs:
        return []
    first = blobs[0].prominence
    kept = [blobs[0]] + [b for b in blobs[1:] if b.prominence >= min_ratio * first]
    return kept[:top_k]


@dataclass(frozen=True)
class MultiGapScopeParams:
    """When a multi-GAP blob replaces the 1-GAP scope C1.

    Attributes
    ----------
    min_prominence_ratio
        "Prominent": the multi-GAP blob's prominence is at least this fraction of the most
        prominent multi-GAP blob of the slice.
    min_inside_fraction
        "Inside C1": the blob's peak lies in C1 and at least this fraction of its scope does.
    """

    min_prominence_ratio: float = 0.5
    min_inside_fraction: float = 0.5


def combine_multi_gap(
    c1: Blob,
    multi_nam: np.ndarray,
    params: ScopeParams = ScopeParams(),
    multi: MultiGapScopeParams = MultiGapScopeParams(),
) -> tuple[np.ndarray, Blob | None]:
    """The final scope C: the most prominent multi-GAP blob inside ``c1``, else ``c1.scope``.

    Returns the scope and the multi-GAP blob used (None when C = C1).
    """
    blobs = find_blobs(multi_nam, params)
    if not blobs:
        return c1.scope, None
    best = blobs[0].prominence
    for blob in blobs:  # most prominent first
        if blob.prominence < multi.min_prominence_ratio * best:
            break
        if not c1.scope[blob.peak_yx]:
            continue
        inside = float((blob.scope & c1.scope).sum()) / max(1, blob.area)
        if inside >= multi.min_inside_fraction:
            return blob.scope, blob
    return c1.scope, None
