"""Image filters shared by several methods: the Hessian dot (blob) enhancement.

Li, Sone and Doi (Med. Phys. 2003): the Hessian's eigenvalues tell blobs (all three strongly
negative for a bright blob) from vessels (two negative, one near zero).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
from scipy import ndimage

#: The blob filter's scales (Gaussian sigmas, mm) and the response its seeds must pass: the defaults of
#: ``baselines.blob_filter.BlobFilterConfig``, and where the VOI set's hard negatives are centred.
BLOB_SIGMAS_MM = (1.5, 2.5, 4.0)
BLOB_SEED_RESPONSE = 40.0


def blob_response(
    image: np.ndarray,
    spacing: Sequence[float],
    sigmas_mm: Sequence[float] = BLOB_SIGMAS_MM,
    region: np.ndarray | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """The largest :func:`dot_enhancement` over ``sigmas_mm`` (float32; 0 outside ``region``);
    ``progress(done, len(sigmas_mm))`` after each scale."""
    response = np.zeros(image.shape, dtype=np.float32)
    for step, sigma in enumerate(sigmas_mm):
        np.maximum(response, dot_enhancement(image, spacing, sigma, region=region), out=response)
        if progress is not None:
            progress(step + 1, len(sigmas_mm))
    return response


def dot_enhancement(
    image: np.ndarray,
    spacing: Sequence[float],
    sigma_mm: float,
    region: np.ndarray | None = None,
    slab: int = 32,
) -> np.ndarray:
    """Scale-normalised Hessian dot response at one scale (0 where the blob condition fails).

    ``region``: a boolean mask of ``image``'s shape; the response is computed there only (0 elsewhere).
    The volume is filtered ``slab`` slices at a time with the Gaussian's reach on either side, so every
    value equals the whole-volume one while the memory stays that of a slab (a whole 512 x 512 x 300
    CT's Hessian would be 2.8 GB of float32).
    """
    sigma_vox = [sigma_mm / s for s in spacing]
    reach = int(4.0 * sigma_vox[0] + 0.5)  # ndimage's kernel radius along z (truncate=4)
    out = np.zeros(image.shape, np.float32)
    for z0 in range(0, image.shape[0], max(1, int(slab))):
        z1 = min(image.shape[0], z0 + max(1, int(slab)))
        inside = np.ones((z1 - z0, *image.shape[1:]), bool) if region is None else np.asarray(region[z0:z1], bool)
        if not inside.any():
            continue
        a, b = max(0, z0 - reach), min(image.shape[0], z1 + reach)
        out[z0:z1][inside] = _dot_response(image[a:b].astype(np.float32), spacing, sigma_mm, sigma_vox,
                                           slice(z0 - a, z1 - a), inside)
    return out


def _dot_response(img: np.ndarray, spacing: Sequence[float], sigma_mm: float, sigma_vox: list[float],
                  rows: slice, inside: np.ndarray) -> np.ndarray:
    """The response at the ``inside`` voxels of the slices ``rows`` of the slab ``img``."""
    hessian = np.empty((int(inside.sum()), 3, 3), dtype=np.float32)
    for i in range(3):
        for j in range(i, 3):
            order = [0, 0, 0]
            order[i] += 1
            order[j] += 1
            # derivative per voxel, converted to per mm, normalised by sigma^2 (Lindeberg)
            d = ndimage.gaussian_filter(img, sigma_vox, order=order, mode="nearest")[rows][inside]
            d *= sigma_mm**2 / (spacing[i] * spacing[j])
            hessian[:, i, j] = d
            hessian[:, j, i] = d
    eig = np.linalg.eigvalsh(hessian)  # ascending: eig[:, 0] most negative
    l1, l3 = eig[:, 0], eig[:, 2]
    return np.where((l3 < 0), (l3**2) / np.maximum(np.abs(l1), 1e-6), 0.0).astype(np.float32)
