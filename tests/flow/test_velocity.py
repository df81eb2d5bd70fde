"""The velocity UNet: presets, validation, time conditioning, shapes."""

from __future__ import annotations

import time

import pytest
import torch

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.flow.velocity import VelocityConfig, VelocityUNet, build_velocity_model

TINY = VelocityConfig(channels=(8, 16, 32), norm_num_groups=8, num_head_channels=8, patch_size=16)


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _randomise_output(model: VelocityUNet) -> None:
    # MONAI starts the output convolution and each residual branch's last one at zero (v = 0
    # everywhere, time without effect); give them weights to see the input and the time
    g = torch.Generator().manual_seed(0)
    for conv in model.modules():
        if isinstance(conv, torch.nn.Conv3d) and not conv.weight.any():
            torch.nn.init.normal_(conv.weight, std=0.05, generator=g)


def test_presets():
    compact, gpu = VelocityConfig.compact(), VelocityConfig.gpu()
    assert compact == VelocityConfig.preset("compact") and gpu == VelocityConfig.preset("gpu")
    assert compact.patch_size == 32 and not any(compact.attention) and compact.num_res_blocks == 1
    assert gpu.patch_size == 64 and any(gpu.attention) and sum(gpu.channels) > sum(compact.channels)
    assert gpu.patch_size % gpu.divisor == 0
    with pytest.raises(ModelConfigError, match="preset"):
        VelocityConfig.preset("huge")


@pytest.mark.parametrize("kwargs", [
    {"channels": (12, 16, 32)},                        # not a multiple of 8 groups
    {"attention": (False, False)},                    # one flag per level
    {"patch_size": 20},                               # not a multiple of 8
    {"num_res_blocks": 0},
    {"time_scale": 0.0},
])
def test_config_validation(kwargs):
    base = {"channels": (8, 16, 32, 32), "attention": (False,) * 4, "patch_size": 16}
    with pytest.raises(ModelConfigError):
        VelocityConfig(**{**base, **kwargs})


def test_config_round_trip_through_a_dict():
    data = TINY.to_dict()
    # lists, as a JSON reader gives them
    data["channels"], data["attention"] = list(data["channels"]), list(data["attention"])
    assert VelocityConfig.from_dict({**data, "unknown_future_field": 1}) == TINY


def test_forward_shape_time_conditioning_and_batching():
    torch.manual_seed(0)
    model = build_velocity_model(TINY).eval()
    x = torch.randn(3, 1, 16, 16, 16)
    with torch.no_grad():
        assert torch.count_nonzero(model(x, 0.5)) == 0          # zero-initialised output layer
        _randomise_output(model)
        v = model(x, 0.5)
        assert v.shape == x.shape and torch.isfinite(v).all()
        assert torch.allclose(model(x, torch.full((3,), 0.5)), v, atol=1e-6)   # scalar t broadcasts
        assert not torch.allclose(model(x, 0.9), v, atol=1e-4)                # the time matters
        mixed = model(x, torch.tensor([0.5, 0.9, 0.5]))
        assert torch.allclose(mixed[0], v[0], atol=1e-5) and torch.allclose(mixed[2], v[2], atol=1e-5)
        assert torch.allclose(mixed[1], model(x[1:2], 0.9)[0], atol=1e-5)     # items are independent


def test_attention_levels_and_bad_inputs():
    config = VelocityConfig(channels=(8, 16), attention=(False, True), num_head_channels=8, patch_size=8)
    model = build_velocity_model(config).eval()
    assert any("attn" in name for name, _ in model.named_modules())
    with torch.no_grad():
        assert model(torch.randn(1, 1, 8, 8, 8), 0.1).shape == (1, 1, 8, 8, 8)
        with pytest.raises(ModelConfigError, match="multiple of 2"):
            model(torch.randn(1, 1, 8, 8, 9), 0.1)
        with pytest.raises(ModelConfigError, match="patches"):
            model(torch.randn(1, 8, 8, 8), 0.1)


def test_compact_preset_is_cheap_on_the_cpu():
    model = build_velocity_model("compact").eval()
    assert sum(p.numel() for p in model.parameters()) < 3_000_000
    x = torch.randn(4, 1, 32, 32, 32)
    with torch.no_grad():
        model(x, 0.5)
        started = time.perf_counter()
        v = model(x, torch.rand(4))
        elapsed = time.perf_counter() - started
    assert v.shape == x.shape
    assert elapsed < 5.0   # about 0.45 s on one thread of the 2-core test machine; loose for shared CPUs
