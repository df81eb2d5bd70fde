import numpy as np
import pytest

from wsnodule_core.baselines.blob_filter import BlobFilterConfig, segment_blobs
from wsnodule_core.image.filters import dot_enhancement
from wsnodule_core.errors import GeometryMismatchError
from wsnodule_core.io.volume import Volume


def _lung_with_sphere_and_vessel(spacing=(1.0, 1.0, 1.0)):
    shape = (40, 64, 64)
    zz, yy, xx = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing)], indexing="ij")
    image = np.full(shape, -850.0, dtype=np.float32)
    sphere = (zz - 20) ** 2 + (yy - 20) ** 2 + (xx - 20) ** 2 <= 5.0**2
    vessel = (yy - 44) ** 2 + (xx - 44) ** 2 <= 2.0**2  # a straight vessel along z
    image[sphere] = 30.0
    image[vessel] = 30.0
    lungs = np.ones(shape, dtype=bool)
    return Volume(image, spacing=spacing), lungs, sphere, vessel


def test_dot_response_is_high_on_blobs_and_low_on_vessels():
    volume, _, sphere, vessel = _lung_with_sphere_and_vessel()
    response = dot_enhancement(volume.array, volume.spacing, sigma_mm=2.5)
    assert response[20, 20, 20] > 10 * response[20, 44, 44]
    assert response[sphere].max() > response[vessel].max() * 5


def test_segment_blobs_finds_the_sphere_not_the_vessel():
    volume, lungs, sphere, vessel = _lung_with_sphere_and_vessel()
    result = segment_blobs(volume, lungs)
    assert result.n_nodules == 1
    found = result.mask > 0
    dice = 2 * (found & sphere).sum() / (found.sum() + sphere.sum())
    assert dice > 0.8
    assert not (found & vessel).any()


def test_segment_blobs_reports_progress_and_checks_the_mask_shape():
    volume, lungs, _, _ = _lung_with_sphere_and_vessel()
    calls = []
    segment_blobs(volume, lungs, BlobFilterConfig(sigmas_mm=(2.0, 3.0)), progress=lambda i, n: calls.append((i, n)))
    assert calls[-1] == (3, 3) and len(calls) == 3
    with pytest.raises(GeometryMismatchError, match="lung mask has shape"):
        segment_blobs(volume, lungs[:-1])
