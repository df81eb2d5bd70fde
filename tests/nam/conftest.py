"""Shared fixtures of the NAM tests: a tiny phantom data set (built once per session) and
synthetic in-memory slice sets (bright discs = "nodules") for fast training tests."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.data.slices import SliceConfig, SliceSet


@pytest.fixture(scope="session")
def phantom_dataset(tmp_path_factory):
    """4 tiny phantom cases (24 x 96 x 96 voxels, 2 train / 1 val / 1 test); about 15 s to build."""
    from wsnodule_core.data.builders import build_dataset

    folder = tmp_path_factory.mktemp("nam_phantom") / "ds"
    build_dataset(folder, source="phantom", n_cases=4, size="tiny", n_shapes=20, seed=0)
    return folder


def disc_slices(n: int, size: int = 32, seed: int = 0) -> SliceSet:
    """``n`` noisy slices, every second one with a bright disc (label 1) at a random place."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    images = (0.3 + 0.05 * rng.standard_normal((n, size, size))).clip(0, 1)
    masks = np.zeros((n, size, size), np.uint8)
    labels = (np.arange(n) % 2).astype(np.int8)
    for i in np.flatnonzero(labels):
        cy, cx = rng.integers(8, size - 8, 2)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= rng.integers(3, 6) ** 2
        images[i][disc] = 0.8
        masks[i][disc] = 1
    return SliceSet(images.astype(np.float16), labels, masks, np.array([f"s{i // 8}" for i in range(n)], dtype=object),
                    np.arange(n, dtype=np.int32), np.ones((n, 2), np.float32), SliceConfig(size=size))


@pytest.fixture(scope="session")
def disc_train() -> SliceSet:
    return disc_slices(64, seed=1)


@pytest.fixture(scope="session")
def disc_val() -> SliceSet:
    return disc_slices(32, seed=2)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run faster, and far steadier on a busy 2-core machine, on one thread."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
