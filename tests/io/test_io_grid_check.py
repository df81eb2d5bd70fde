"""``check_same_grid``: a mask on another grid than its image is refused, naming the difference."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.errors import GeometryMismatchError
from wsnodule_core.io import Volume
from wsnodule_core.io.volume import check_same_grid, geometry_differences


def _ct(**changes) -> Volume:
    values = {"array": np.zeros((4, 5, 6), np.int16), "spacing": (2.5, 0.7, 0.7), "origin": (-100.0, -80.0, 30.0)}
    values.update(changes)
    return Volume(**values)


def test_same_grid_within_float32_rounding_passes():
    ct = _ct()
    near = _ct(origin=tuple(np.float32(v) + 1e-5 for v in ct.origin), spacing=(2.5000001, 0.7, 0.7))
    assert geometry_differences(near, ct) == []
    check_same_grid(near, ct, "label")


@pytest.mark.parametrize("changes, words", [
    ({"origin": (-50.0, -80.0, 30.0)}, ["origin", "50.0 mm"]),
    ({"spacing": (2.5, 0.8, 0.8)}, ["spacing", "0.8"]),
    ({"direction": np.diag([-1.0, 1.0, 1.0])}, ["direction"]),
    ({"array": np.zeros((4, 5, 7), np.int16)}, ["shape", "(4, 5, 7)"]),
])
def test_other_grid_is_refused_naming_the_difference(changes, words):
    with pytest.raises(GeometryMismatchError) as info:
        check_same_grid(_ct(**changes), _ct(), "label mask lab.nii.gz")
    message = str(info.value)
    assert "label mask lab.nii.gz" in message and "resample" in message.lower()
    for word in words:
        assert word in message
