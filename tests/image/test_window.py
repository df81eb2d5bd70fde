"""The one CT window, pinned to the four window functions it replaced (tests/image/golden.npz)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.image.filters import dot_enhancement
from wsnodule_core.image.window import FLOW_WINDOW, NAM3D_WINDOW, NAM_WINDOW, apply_window, invert_window

GOLDEN = np.load(Path(__file__).with_name("golden.npz"))


def test_named_windows_match_the_old_functions():
    hu = GOLDEN["hu"]
    for name, window in (("w_slice", NAM_WINDOW), ("w_3d", NAM3D_WINDOW), ("w_flow", FLOW_WINDOW),
                         ("pw_ct", NAM3D_WINDOW)):  # nam normalize_ct_slice, normalize_ct_3d, window_ct, pw4medseg "ct"
        out = apply_window(hu, window)
        assert out.dtype == np.float32 and np.array_equal(out, GOLDEN[name])
    assert np.array_equal(apply_window(hu.astype(np.float64), NAM_WINDOW), GOLDEN["w_slice64"])
    tensor = apply_window(torch.from_numpy(hu), NAM_WINDOW)
    assert isinstance(tensor, torch.Tensor) and np.array_equal(tensor.numpy(), GOLDEN["w_slice_t"])
    assert np.array_equal(apply_window(torch.from_numpy(hu), FLOW_WINDOW).numpy(), GOLDEN["w_flow_t"])
    scalar = apply_window(np.float32(-250.0), FLOW_WINDOW)
    assert scalar.shape == () and scalar == GOLDEN["w_flow0"]
    assert np.array_equal(invert_window(GOLDEN["w_flow"], FLOW_WINDOW), GOLDEN["unw"])  # was flow unwindow


def test_window_values_ranges_and_inverse():
    hu = np.array([-2000.0, -1200.0, -300.0, 600.0, 3000.0])
    assert np.allclose(apply_window(hu, NAM_WINDOW), [0.0, 0.0, 0.5, 1.0, 1.0])
    assert np.allclose(apply_window(hu, NAM_WINDOW, out_range="symmetric"), [-1.0, -1.0, 0.0, 1.0, 1.0])
    inside = np.array([-1000.0, 0.0, 1000.0])
    for out_range in ("unit", "symmetric"):
        values = apply_window(inside, FLOW_WINDOW, out_range=out_range)
        assert np.allclose(invert_window(values, FLOW_WINDOW, out_range=out_range), inside)
        back = invert_window(torch.from_numpy(values), FLOW_WINDOW, out_range=out_range)
        assert torch.allclose(back, torch.tensor(inside, dtype=torch.float32))
    with pytest.raises(ModelConfigError):
        apply_window(hu, (10.0, 10.0))
    with pytest.raises(ModelConfigError):
        apply_window(hu, NAM_WINDOW, out_range="percent")


def test_dot_enhancement_prefers_a_blob_to_a_tube():
    z, y, x = np.mgrid[:21, :21, :21]
    blob = np.exp(-((z - 10) ** 2 + (y - 10) ** 2 + (x - 10) ** 2) / 8.0).astype(np.float32)
    tube = np.exp(-((y - 10) ** 2 + (x - 10) ** 2) / 8.0).astype(np.float32)
    assert dot_enhancement(blob, (1.0, 1.0, 1.0), 2.0)[10, 10, 10] > 10 * dot_enhancement(tube, (1.0, 1.0, 1.0), 2.0)[10, 10, 10]


def test_dot_enhancement_by_slabs_and_in_a_region_equals_the_whole_volume_response():
    rng = np.random.default_rng(0)
    image = (rng.standard_normal((30, 24, 20)) * 200 - 600).astype(np.int16)
    spacing = (1.0, 0.8, 0.8)
    whole = dot_enhancement(image, spacing, 2.5, slab=image.shape[0])
    assert np.abs(whole).max() > 0
    for slab in (1, 4, 11):  # slabs thinner than the kernel's reach (10 slices) and thicker
        assert np.array_equal(dot_enhancement(image, spacing, 2.5, slab=slab), whole)
    region = rng.random(image.shape) > 0.6
    inside = dot_enhancement(image, spacing, 2.5, region=region, slab=7)
    assert np.array_equal(inside[region], whole[region]) and not inside[~region].any()
