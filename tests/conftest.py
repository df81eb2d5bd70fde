"""Shared test set-up: the real-data folder from WSNODULE_DATA, made absolute once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_DATA = os.environ.get("WSNODULE_DATA")
if _DATA:
    # CI sets a path relative to the repository root; later chdirs must not break it
    os.environ["WSNODULE_DATA"] = str(Path(_DATA).resolve())


@pytest.fixture
def one_torch_thread():
    """Tiny models run faster, and far steadier on a busy 2-core machine, on one torch thread
    (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``); the count is restored after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def wsnodule_data() -> Path:
    """The real-data folder, or a skip saying how to provide it."""
    value = os.environ.get("WSNODULE_DATA")
    if not value:
        pytest.skip("WSNODULE_DATA is not set: point it at the shared data folder to run real-data tests")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"WSNODULE_DATA={value} is not a folder")
    return path


@pytest.fixture
def chest_ct_series(wsnodule_data: Path) -> list[Path]:
    """The real chest CT DICOM series folders under $WSNODULE_DATA/chest-ct."""
    folders = sorted(p for p in (wsnodule_data / "chest-ct").glob("*") if p.is_dir())
    if not folders:
        pytest.skip(f"no DICOM series folders under {wsnodule_data / 'chest-ct'}")
    return folders


@pytest.fixture(scope="session")
def lite_medsam():
    """LiteMedSAM on the CPU, loaded once, or a skip saying how to install it."""
    from wsnodule_core.errors import FoundationModelError
    from wsnodule_core.foundation import checkpoint_path, load_lite_medsam

    try:
        checkpoint_path()
    except FoundationModelError as error:
        pytest.skip(f"LiteMedSAM unavailable: {error}")
    return load_lite_medsam("cpu")


@pytest.fixture
def smooth_sphere_ct():
    """A factory: a 50 HU sphere in the middle of -850 HU lung with a smooth (correlated, as CT noise is)
    60 HU texture, spacing (2.5, 0.7, 0.7) mm -> (Volume, sphere mask). Per-voxel white noise would make
    LiteMedSAM fill loose boxes."""
    import numpy as np
    from scipy import ndimage

    from wsnodule_core.io.volume import Volume

    def make(radius_mm: float = 6.0, shape: tuple[int, int, int] = (9, 64, 64),
             origin: tuple[float, float, float] = (-20.0, 30.0, -100.0)):
        spacing = (2.5, 0.7, 0.7)
        grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, spacing)], indexing="ij")
        sphere = sum(g ** 2 for g in grids) <= radius_mm ** 2
        texture = ndimage.gaussian_filter(np.random.default_rng(1).normal(0, 1, shape), (0, 2, 2))
        image = np.where(sphere, 50.0, -850.0 + 60.0 * texture / texture.std())
        return Volume(image.astype(np.float32), spacing, origin=origin), sphere

    return make
