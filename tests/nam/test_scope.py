"""The screening scope C: the most prominent watershed blob of a NAM, top two, multi-GAP combination."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.errors import NamSegmentationError
from wsnodule_core.nam.scope import (
    MultiGapScopeParams,
    ScopeParams,
    combine_multi_gap,
    find_blobs,
    screening_scopes,
)

YY, XX = np.mgrid[:100, :120].astype(float)


def gaussian(cy: float, cx: float, sigma: float, height: float) -> np.ndarray:
    return height * np.exp(-((YY - cy) ** 2 + (XX - cx) ** 2) / (2 * sigma**2))


def test_most_prominent_blob_and_top_two():
    nam = gaussian(30, 30, 6, 1.0) + gaussian(70, 90, 6, 2.0) + gaussian(75, 20, 5, 0.7)
    blobs = find_blobs(nam, ScopeParams(smooth_sigma_px=0))
    assert len(blobs) == 3
    assert blobs[0].peak_yx == (70, 90)
    assert blobs[1].peak_yx == (30, 30)
    assert blobs[2].peak_yx == (75, 20)
    # peak prominence = height above the threshold (0.2 of the max)
    assert blobs[0].prominence == pytest.approx(2.0 - 0.4, abs=1e-3)
    assert blobs[1].prominence == pytest.approx(1.0 - 0.4, abs=1e-3)
    top = screening_scopes(nam, ScopeParams(smooth_sigma_px=0), top_k=2)
    assert [b.peak_yx for b in top] == [(70, 90), (30, 30)]
    assert top[0].scope[70, 90] and not top[0].scope[30, 30]
    assert top[1].scope[30, 30] and not top[1].scope[70, 90]
    assert not (top[0].scope & top[1].scope).any()


def test_scope_is_where_the_nam_exceeds_a_fraction_of_the_peak():
    sigma, fraction = 6.0, 0.3
    nam = gaussian(50, 60, sigma, 1.0)
    (blob,) = find_blobs(nam, ScopeParams(smooth_sigma_px=0, scope_fraction=fraction, threshold_fraction=0.1))
    radius = sigma * np.sqrt(2 * np.log(1 / fraction))  # exp(-r^2 / 2 s^2) = fraction
    assert blob.area == pytest.approx(np.pi * radius**2, rel=0.05)
    assert blob.basin.sum() > blob.area
    assert (blob.scope <= blob.basin).all()


def test_integral_prominence_prefers_the_wide_blob():
    nam = gaussian(30, 30, 3, 1.0) + gaussian(60, 85, 12, 0.8)
    assert find_blobs(nam, ScopeParams(smooth_sigma_px=0))[0].peak_yx == (30, 30)
    wide = find_blobs(nam, ScopeParams(smooth_sigma_px=0, prominence="integral"))[0]
    assert wide.peak_yx == (60, 85)


def test_weak_second_blob_is_dropped_by_min_ratio():
    nam = gaussian(30, 30, 6, 1.0) + gaussian(70, 90, 6, 0.3)
    assert len(screening_scopes(nam, ScopeParams(smooth_sigma_px=0), top_k=2)) == 2
    kept = screening_scopes(nam, ScopeParams(smooth_sigma_px=0), top_k=2, min_ratio=0.5)
    assert [b.peak_yx for b in kept] == [(30, 30)]


def test_no_blob_in_a_non_positive_nam():
    assert find_blobs(-gaussian(50, 50, 5, 1.0)) == []
    assert screening_scopes(np.zeros((20, 20)), top_k=2) == []


def test_multi_gap_blob_inside_c1_replaces_it():
    params = ScopeParams(smooth_sigma_px=0)
    (c1,) = screening_scopes(gaussian(50, 60, 12, 1.0), params)
    inside = combine_multi_gap(c1, gaussian(52, 63, 3, 1.0), params)
    assert inside[1] is not None
    assert inside[0][52, 63] and inside[0].sum() < 0.3 * c1.scope.sum()
    # the most prominent multi-GAP blob lies outside C1: the prominent one inside C1 is used
    scope, used = combine_multi_gap(c1, gaussian(52, 63, 3, 0.8) + gaussian(10, 10, 3, 1.0), params)
    assert used is not None and scope[52, 63] and not scope[10, 10]
    # only outside C1, or too weak: C stays C1
    scope, used = combine_multi_gap(c1, gaussian(10, 10, 3, 1.0), params)
    assert used is None and (scope == c1.scope).all()
    weak = gaussian(10, 10, 3, 1.0) + gaussian(52, 63, 3, 0.3)
    scope, used = combine_multi_gap(c1, weak, params, MultiGapScopeParams(min_prominence_ratio=0.5))
    assert used is None


def test_bad_parameters_raise():
    with pytest.raises(NamSegmentationError, match="prominence"):
        ScopeParams(prominence="area")
    with pytest.raises(NamSegmentationError, match="scope_fraction"):
        ScopeParams(scope_fraction=1.5)
    with pytest.raises(NamSegmentationError, match="2D"):
        find_blobs(np.zeros((2, 3, 4)))
