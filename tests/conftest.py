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


@pytest.fixture(scope="session")
def stub_medsam():
    """A tiny stand-in for LiteMedSAM (no checkpoint, milliseconds a call) with its three parts' call
    shapes: the "embedding" is the input image pooled to 64 x 64, and the "decoder" marks the bright
    pixels (above half the crop's range) inside the box, minus a disk around each negative point.
    It counts its encoder passes in ``net.encoded``."""
    from pathlib import Path

    import torch
    import torch.nn.functional as F
    from torch import nn

    from wsnodule_core.foundation.lite_medsam import LiteMedSam

    class Encoder(nn.Module):
        def __init__(self, net) -> None:
            super().__init__()
            self.net = [net]
            self.weight = nn.Parameter(torch.zeros(1))

        def forward(self, images):
            self.net[0].encoded += len(images)
            return F.avg_pool2d(images[:, :1], 4).expand(-1, 256, -1, -1).contiguous()

    class Prompts(nn.Module):
        def forward(self, points=None, boxes=None, masks=None):
            rows = []
            if boxes is not None:
                x0, y0, x1, y1 = boxes.reshape(4).tolist()
                rows += [[x0, y0, 2.0], [x1, y1, 3.0]]
            if points is not None:
                rows += [[*xy, float(label)] for xy, label in zip(points[0][0].tolist(), points[1][0].tolist())]
            return torch.tensor(rows, dtype=torch.float32)[None], torch.zeros(1, 256, 64, 64)

        def get_dense_pe(self):
            return torch.zeros(1, 256, 64, 64)

    class Decoder(nn.Module):
        def forward(self, image_embeddings, image_pe, sparse_prompt_embeddings, dense_prompt_embeddings,
                    multimask_output):
            bright = F.interpolate(image_embeddings[:, :1], size=(256, 256), mode="nearest")[0, 0] - 0.5
            yy, xx = torch.meshgrid(torch.arange(256.0) + 0.5, torch.arange(256.0) + 0.5, indexing="ij")
            keep = torch.zeros(256, 256, dtype=torch.bool)
            for x, y, kind in sparse_prompt_embeddings[0].tolist():
                if kind == 2.0:
                    corner = (x, y)
                elif kind == 3.0:
                    keep |= (xx >= corner[0]) & (xx < x) & (yy >= corner[1]) & (yy < y)
            for x, y, kind in sparse_prompt_embeddings[0].tolist():
                if kind == 0.0:
                    keep &= (xx - x) ** 2 + (yy - y) ** 2 > 12.0 ** 2
            logits = torch.where(keep, bright, torch.full_like(bright, -1.0))
            return logits[None, None], torch.ones(1, 1)

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoded = 0
            self.image_encoder, self.prompt_encoder, self.mask_decoder = Encoder(self), Prompts(), Decoder()

    return LiteMedSam(Net().eval(), torch.device("cpu"), Path("stand-in"))
