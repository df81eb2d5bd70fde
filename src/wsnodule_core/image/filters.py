"""Image filters shared by several methods: the Hessian dot (blob) enhancement.

Li, Sone and Doi (Med. Phys. 2003): the Hessian's eigenvalues tell blobs (all three strongly
negative for a bright blob) from vessels (two negative, one near zero).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage


def dot_enhancement(
    image: np.ndarray,
    spacing: Sequence[float],
    sigma_mm: float,
) -> np.ndarray:
    """Scale-normalised Hessian dot response at one scale (0 where the blob condition fails)."""
    sigma_vox = [sigma_mm / s for s in spacing]
    img = image.astype(np.float32, copy=False)
    hessian = np.empty(image.shape + (3, 3), dtype=np.float32)
    for i in range(3):
        for j in range(i, 3):
            order = [0, 0, 0]
            order[i] += 1
            order[j] += 1
            # derivative per voxel, converted to per mm, normalised by sigma^2 (Lindeberg)
            d = ndimage.gaussian_filter(img, sigma_vox, order=order, mode="nearest")
            d *= sigma_mm**2 / (spacing[i] * spacing[j])
            hessian[..., i, j] = d
            hessian[..., j, i] = d
    eig = np.linalg.eigvalsh(hessian)  # ascending: eig[...,0] most negative
    l1, l3 = eig[..., 0], eig[..., 2]
    response = np.where((l3 < 0), (l3**2) / np.maximum(np.abs(l1), 1e-6), 0.0)
    return response.astype(np.float32)
