"""A Lung-PET-CT-Dx background's annotated tumours: hybrid nodules keep clear of them and their slices give
no negatives (real data; skips without WSNODULE_DATA)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

A0001 = "lung-pet-ct-dx/Lung-PET-CT-Dx/Lung_Dx-A0001/04-04-2007-NA-Chest-07990/2.000000-5mm-40805"


@pytest.fixture(scope="module")
def a0001():
    root = os.environ.get("WSNODULE_DATA")
    if not root or not (Path(root) / A0001).is_dir():
        pytest.skip("needs WSNODULE_DATA with lung-pet-ct-dx (Lung_Dx-A0001)")
    from wsnodule_core.io.readers import read_volume

    return read_volume(Path(root) / A0001)


def test_the_tumour_boxes_of_a_lung_pet_ct_dx_series_mark_its_slices(a0001):
    from wsnodule_core.data.hybrid import box_mask, tumour_boxes_of, unsafe_slices

    boxes = tumour_boxes_of(a0001)
    assert boxes, "A0001 has an annotated tumour"
    mask = box_mask(a0001, boxes)
    reached = np.flatnonzero(mask.any(axis=(1, 2)))
    assert 5 <= len(reached) <= 20  # 11 boxed slices of 5 mm in the collection's annotation
    unsafe = unsafe_slices(mask)
    assert set(reached) < set(unsafe) and len(unsafe) == len(reached) + 2
