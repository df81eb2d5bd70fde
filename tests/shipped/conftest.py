"""A small synthetic chest the shipped-model tests segment, and the shipped real sample with its lungs
and its nodule's region."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.io.volume import Volume

SPACING = (2.5, 0.9, 0.8)
SHAPE = (12, 128, 128)


@pytest.fixture(scope="session")
def synthetic_chest() -> tuple[Volume, np.ndarray]:
    """(CT, nodule mask): air outside an elliptic body, two lungs, a 10 mm sphere of 20 HU in the right
    lung (3 slices), a smooth 20 HU texture (per-voxel white noise makes LiteMedSAM fill loose boxes)."""
    from scipy import ndimage

    z, y, x = np.meshgrid(*(np.arange(n) * s for n, s in zip(SHAPE, SPACING)), indexing="ij")
    ny, nx = SHAPE[1] * SPACING[1], SHAPE[2] * SPACING[2]
    hu = np.full(SHAPE, -1000.0, np.float32)
    hu[((y - ny / 2) / (0.45 * ny)) ** 2 + ((x - nx / 2) / (0.47 * nx)) ** 2 < 1] = 40
    for cx in (0.3 * nx, 0.7 * nx):
        hu[((y - ny / 2) / (0.3 * ny)) ** 2 + ((x - cx) / (0.16 * nx)) ** 2 < 1] = -850
    nodule = (z - 12.5) ** 2 + (y - ny / 2) ** 2 + (x - 0.3 * nx) ** 2 <= 25
    hu[nodule] = 20
    texture = ndimage.gaussian_filter(np.random.default_rng(1).normal(0, 1, SHAPE), (0, 2, 2))
    return Volume(hu + (20 * texture / texture.std()).astype(np.float32), SPACING, (5.0, -10.0, 20.0)), nodule


@pytest.fixture(scope="session")
def lidc_sample():
    """The shipped LIDC-IDRI-0001 sample and its lung mask (``segment_lungs``), computed once."""
    from wsnodule_core.data.lung import segment_lungs
    from wsnodule_core.data.sample import load_lidc_sample

    sample = load_lidc_sample()
    return sample, segment_lungs(sample.ct).lungs


@pytest.fixture(scope="session")
def sample_nodule_region(lidc_sample):
    """``(CT, lungs, label)`` of the sample's nodule region: its slices +- 3, 40 px around it in-plane."""
    from dataclasses import replace

    sample, lungs = lidc_sample
    ct, gt = sample.ct, np.asarray(sample.label.array) > 0
    zs, ys, xs = (np.flatnonzero(gt.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    lo = (max(0, zs[0] - 3), max(0, ys[0] - 40), max(0, xs[0] - 40))
    hi = (zs[-1] + 4, ys[-1] + 41, xs[-1] + 41)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    part = replace(ct, array=np.asarray(ct.array)[box], origin=tuple(ct.index_to_world(lo)))
    return part, lungs[box], gt[box]
