"""Random fields for tissue texture.

Low-frequency fields (lung density variation, soft-tissue shading) live on a
lattice fixed in world millimetres, so every voxel grid that samples the same
chest sees the same field. Fine texture is below the scale any voxel grid
resolves consistently, so it is drawn on the requested grid itself.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from wsnodule_core.data.phantom.vessels import Grid

# world box (x, y, z mm) that holds every chest the phantom draws
_LATTICE_LOW = np.array([-200.0, -160.0, -260.0])
_LATTICE_HIGH = np.array([200.0, 160.0, 300.0])


def _interpolation_matrix(coords: np.ndarray, n: int) -> np.ndarray:
    """Dense (len(coords), n) linear-interpolation weights for lattice coordinates ``coords``."""
    c = np.clip(coords, 0.0, n - 1.000001)
    i0 = np.floor(c).astype(np.int64)
    w = c - i0
    m = np.zeros((len(c), n), dtype=np.float32)
    rows = np.arange(len(c))
    m[rows, i0] = 1.0 - w
    m[rows, np.minimum(i0 + 1, n - 1)] += w
    return m


def world_field(
    rng: np.random.Generator, grid: Grid, *, lattice_mm: float = 8.0, sigma_mm: float = 20.0
) -> np.ndarray:
    """A smooth unit-SD random field fixed in world space, sampled on ``grid`` (float32)."""
    size = np.floor((_LATTICE_HIGH - _LATTICE_LOW) / lattice_mm).astype(int) + 1  # x, y, z
    lattice = rng.standard_normal(size[::-1]).astype(np.float32)  # z, y, x
    lattice = ndimage.gaussian_filter(lattice, sigma_mm / lattice_mm, mode="reflect")
    lattice /= lattice.std() + 1e-12
    z, y, x = grid.axes()
    mz = _interpolation_matrix((z - _LATTICE_LOW[2]) / lattice_mm, size[2])
    my = _interpolation_matrix((y - _LATTICE_LOW[1]) / lattice_mm, size[1])
    mx = _interpolation_matrix((x - _LATTICE_LOW[0]) / lattice_mm, size[0])
    out = np.tensordot(lattice, mx, axes=([2], [1]))  # z, y, nx
    out = np.einsum("zyx,Yy->zYx", out, my)
    out = np.tensordot(mz, out, axes=([1], [0]))
    return out.astype(np.float32)


def grid_texture(rng: np.random.Generator, grid: Grid, *, sigma_mm: float = 0.9) -> np.ndarray:
    """Fine unit-SD texture (white noise smoothed at ``sigma_mm``) on ``grid`` (float32)."""
    white = rng.standard_normal(grid.shape, dtype=np.float32)
    sigma = [max(sigma_mm / s, 0.5) for s in grid.spacing]
    field = ndimage.gaussian_filter(white, sigma, mode="wrap")
    return field / (field.std() + 1e-12)
