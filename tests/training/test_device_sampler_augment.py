"""Device choice, class-balanced batches and on-device augmentation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsnodule_core.errors import ModelConfigError, TrainingDataError
from wsnodule_core.training.augment import AugmentConfig, augment_batch
from wsnodule_core.training.device import amp_enabled, autocast, choose_device, grad_scaler
from wsnodule_core.training.sampler import BalancedBatchSampler


@pytest.fixture(autouse=True)
def _one_torch_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def test_choose_device_says_why_it_falls_back():
    cpu = choose_device("cpu")
    assert cpu.device == torch.device("cpu") and cpu.fallback_reason is None
    auto = choose_device("auto")
    if not torch.cuda.is_available():
        assert auto.device.type in ("cpu", "mps") and "CUDA not available" in auto.fallback_reason
        forced = choose_device("cuda")
        assert forced.requested == "cuda" and "CUDA not available" in forced.fallback_reason
    else:
        assert auto.device.type == "cuda" and auto.fallback_reason is None
    with pytest.raises(ModelConfigError, match="device"):
        choose_device("tpu")
    with pytest.raises(ModelConfigError):
        choose_device("cpu:1")


def test_mixed_precision_is_cuda_only():
    cpu = torch.device("cpu")
    assert not amp_enabled(cpu, True)
    assert amp_enabled(torch.device("cuda"), True) and not amp_enabled(torch.device("cuda"), False)
    with autocast(cpu, True):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    assert not grad_scaler(cpu, True).is_enabled()


def test_balanced_batches():
    labels = np.array([1] * 5 + [0] * 35)
    assert len(BalancedBatchSampler(labels, batch_size=10)) == 1  # "balanced": 5 + 5 slices per epoch
    sampler = BalancedBatchSampler(labels, batch_size=10, seed=4, epoch_size="all")
    sampler.set_epoch(0)
    batches = list(sampler)
    assert len(batches) == 4 == len(sampler)
    for batch in batches:
        assert len(batch) == 10 and sum(labels[batch]) == 5
    # the small class is cycled through whole permutations: 20 positive draws = each positive 4 times
    counts = np.bincount(np.concatenate(batches), minlength=40)
    assert np.all(counts[:5] == 4)
    negatives = np.concatenate(batches)[labels[np.concatenate(batches)] == 0]
    assert len(set(negatives.tolist())) == 20  # no negative repeats within one pass
    assert batches == list(sampler)  # same epoch, same batches
    sampler.set_epoch(1)
    assert batches != list(sampler)


def test_ranks_get_disjoint_shares_of_the_global_batches():
    labels = np.array([0, 1] * 30)
    ranks = [BalancedBatchSampler(labels, 6, seed=1, rank=r, world_size=2) for r in (0, 1)]
    single = BalancedBatchSampler(labels, 6, seed=1)
    shares = [list(r) for r in ranks]
    assert len(shares[0]) == len(shares[1]) == 5
    assert [b.tolist() for b in single.global_batches()] == [x for pair in zip(*shares) for x in pair]
    with pytest.raises(TrainingDataError, match="both classes"):
        BalancedBatchSampler(np.ones(10), 4)


def _identity_config(**changes) -> AugmentConfig:
    values = dict(flip_lr=False, flip_ud=False, rotate_deg=0.0, scale=0.0, shift_fraction=0.0,
                  intensity_gain=0.0, intensity_shift=0.0)
    return AugmentConfig(**{**values, **changes})


def test_augmentation_without_randomness_is_identity():
    x = torch.rand(3, 1, 16, 16)
    out = augment_batch(x, torch.Generator().manual_seed(0), _identity_config())
    assert torch.allclose(out, x, atol=1e-5)


def test_flips_and_intensity_jitter():
    x = torch.rand(16, 1, 8, 8)
    out = augment_batch(x, torch.Generator().manual_seed(0), _identity_config(flip_lr=True))
    flipped = [torch.allclose(o, xi.flip(-1), atol=1e-5) for o, xi in zip(out, x)]
    same = [torch.allclose(o, xi, atol=1e-5) for o, xi in zip(out, x)]
    assert all(f or s for f, s in zip(flipped, same)) and any(flipped) and any(same)
    jitter = augment_batch(torch.full((8, 1, 4, 4), 0.5), torch.Generator().manual_seed(1),
                           _identity_config(intensity_gain=0.1, intensity_shift=0.05))
    values = jitter[:, 0, 0, 0]
    assert torch.all((values >= 0.5 * 0.9 - 0.05 - 1e-6) & (values <= 0.5 * 1.1 + 0.05 + 1e-6))
    assert torch.all(jitter == values.view(8, 1, 1, 1))  # one gain/offset per image
    a = augment_batch(x, torch.Generator().manual_seed(5), AugmentConfig())
    b = augment_batch(x, torch.Generator().manual_seed(5), AugmentConfig())
    assert torch.equal(a, b) and 0.0 <= float(a.min()) and float(a.max()) <= 1.0


def test_device_of_reads_the_first_parameter_then_buffer():
    from wsnodule_core.training.device import device_of

    assert device_of(torch.nn.Linear(2, 2)) == torch.device("cpu")
    assert device_of(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")
    buffers_only = torch.nn.BatchNorm1d(2, affine=False).to("meta")
    assert device_of(buffers_only) == torch.device("meta")
    assert device_of(torch.nn.ReLU()) == torch.device("cpu")           # neither: the CPU
    assert device_of(lambda x: x) == torch.device("cpu")               # not a module (a plain callable)
