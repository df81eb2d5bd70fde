"""What the scanner does to the ideal image: slice profile, in-plane PSF and CT noise.

Noise is white noise shaped in-plane by the noise power spectrum (NPS) of
filtered back-projection, ``NPS(f) ~ f * exp(-(f / f_c)^2)``: the ramp filter
times the reconstruction kernel's apodisation. A soft kernel (``f_c`` low)
gives blotchy, positively correlated noise; a sharp kernel fine-grained noise.
Frequencies are in cycles/mm, so the texture does not depend on the pixel size
(as long as the grid resolves it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from wsnodule_core.data.phantom.vessels import Grid


@dataclass(frozen=True)
class Kernel:
    """A reconstruction kernel: in-plane PSF FWHM (mm) and NPS cut-off ``f_c`` (cycles/mm)."""

    psf_fwhm_mm: float
    nps_cutoff: float


KERNELS = {
    "soft": Kernel(psf_fwhm_mm=1.2, nps_cutoff=0.25),
    "sharp": Kernel(psf_fwhm_mm=0.6, nps_cutoff=0.75),
}


def slice_sigma_voxels(spacing_z: float, slice_thickness_mm: float) -> float:
    """Extra Gaussian z blur (voxels) that turns a voxel-wide box profile into a ``slice_thickness`` one.

    A box profile of width ``t`` has variance ``t^2 / 12``; the rendering already
    averages over one voxel (``spacing_z``), so only the difference is added.
    """
    extra = max(slice_thickness_mm**2 - spacing_z**2, 0.0) / 12.0
    return float(np.sqrt(extra) / spacing_z)


def blur(image: np.ndarray, grid: Grid, kernel: Kernel, slice_thickness_mm: float) -> np.ndarray:
    """Apply the slice profile (z) and the kernel's Gaussian PSF (in-plane)."""
    sz, sy, sx = grid.spacing
    psf_sigma = kernel.psf_fwhm_mm / 2.3548
    sigma = [
        slice_sigma_voxels(sz, slice_thickness_mm),
        # the rendering already has a one-pixel box (variance h^2/12) of its own
        np.sqrt(max(psf_sigma**2 - sy**2 / 12.0, 0.0)) / sy,
        np.sqrt(max(psf_sigma**2 - sx**2 / 12.0, 0.0)) / sx,
    ]
    sigma = [s if s > 0.2 else 0.0 for s in sigma]
    if not any(sigma):
        return image
    return ndimage.gaussian_filter(image, sigma, mode="nearest", truncate=3.0)


def ct_noise(
    rng: np.random.Generator, grid: Grid, sd_hu: float, kernel: Kernel, slice_thickness_mm: float
) -> np.ndarray:
    """Stationary correlated noise with the kernel's NPS and standard deviation ``sd_hu`` (float32)."""
    nz, ny, nx = grid.shape
    if sd_hu == 0:
        return np.zeros(grid.shape, dtype=np.float32)
    fy = np.fft.fftfreq(ny, d=grid.spacing[1])[:, None]
    fx = np.fft.rfftfreq(nx, d=grid.spacing[2])[None, :]
    f = np.sqrt(fy**2 + fx**2)
    nps = (f + 0.03 * kernel.nps_cutoff) * np.exp(-((f / kernel.nps_cutoff) ** 2))
    amplitude = np.sqrt(nps).astype(np.float32)
    white = rng.standard_normal(grid.shape, dtype=np.float32)
    noise = np.fft.irfft2(np.fft.rfft2(white) * amplitude, s=(ny, nx)).astype(np.float32)
    sigma_z = slice_sigma_voxels(grid.spacing[0], slice_thickness_mm)
    if sigma_z > 0.2 and nz > 1:
        noise = ndimage.gaussian_filter1d(noise, sigma_z, axis=0, mode="wrap", truncate=3.0)
    # normalise with the expected SD (not the sample SD) so the level does not depend on the draw
    weight = np.full(amplitude.shape, 2.0)
    weight[:, 0] = 1.0
    if nx % 2 == 0:
        weight[:, -1] = 1.0
    power = float((weight * amplitude.astype(float) ** 2).sum()) / (ny * nx)
    if sigma_z > 0.2 and nz > 1:
        taps = np.exp(-0.5 * (np.arange(-int(3 * sigma_z + 0.5), int(3 * sigma_z + 0.5) + 1) / sigma_z) ** 2)
        taps /= taps.sum()
        power *= float((taps**2).sum())
    return noise * np.float32(sd_hu / np.sqrt(power))
