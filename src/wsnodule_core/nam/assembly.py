"""The network grid of a volume's slices (lung crop or resize) and the way back to the input grid."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from wsnodule_core.data.lung import CropResult, LungSegmentation, crop_mask, lung_crop, uncrop_mask
from wsnodule_core.io.volume import Volume, check_mask_matches


@dataclass(frozen=True, eq=False)
class NetworkGrid:
    """How the slices are fed to the network and how network pixels map back to the input grid.

    Network pixel (u, v) of input pixel (j, i): ``u = a_y j + b_y``, ``v = a_x i + b_x``. ``source``
    holds the HU slices to feed: the lung crop (``crop`` set) or the input slices, which are then
    resized to ``size`` on the device. ``lungs`` is the lung mask on the network grid (crop only).
    """

    a: tuple[float, float]
    b: tuple[float, float]
    size: int
    source: np.ndarray
    crop: CropResult | None
    lungs: np.ndarray | None
    out_shape: tuple[int, int]

    def to_source(self, plane: np.ndarray, order: int) -> np.ndarray:
        """A network-grid map on the input slice grid (order 1: bilinear, 0: nearest)."""
        mode = "constant" if self.crop is not None else "nearest"  # outside the crop: 0
        return ndimage.affine_transform(
            np.asarray(plane, np.float32), np.asarray(self.a), offset=np.asarray(self.b),
            output_shape=self.out_shape, order=order, mode=mode, cval=0.0, prefilter=False,
        )

    def mask_to_source(self, stack: np.ndarray, reference: Volume) -> np.ndarray:
        """A (z, size, size) boolean stack on the input volume's grid."""
        if self.crop is not None:
            return uncrop_mask(stack, self.crop, reference)
        return np.stack([self.to_source(p, order=0) > 0.5 for p in stack])


def network_grid(
    volume: Volume, lungs: np.ndarray | Volume | LungSegmentation | None, size: int,
    pixel_spacing_mm: float | None = None, with_lungs: bool = False,
) -> NetworkGrid:
    """The lung-centred crop of ``size`` pixels when ``lungs`` are given, else a resize to ``size``."""
    ny, nx = volume.shape[1:]
    if isinstance(lungs, LungSegmentation):
        lungs = lungs.lungs
    if lungs is None:
        ay, ax = size / ny, size / nx  # bilinear resize with align_corners=False
        b = (0.5 * ay - 0.5, 0.5 * ax - 0.5)
        return NetworkGrid((ay, ax), b, size, volume.array, None, None, (ny, nx))
    mask = check_mask_matches(lungs, volume).astype(bool, copy=False)
    crop = lung_crop(volume, mask, size=size, pixel_spacing_mm=pixel_spacing_mm)
    a = (1.0 / crop.scale_yx[0], 1.0 / crop.scale_yx[1])
    b = (-float(crop.offset_yx[0]), -float(crop.offset_yx[1]))
    lungs_net = crop_mask(mask, crop) if with_lungs else None
    return NetworkGrid(a, b, size, crop.volume.array, crop, lungs_net, (ny, nx))


def link_slices(mask: np.ndarray, bridge_gap: bool = True) -> np.ndarray:
    """int32 labels of the 3D connected components (26-connected) of a (z, y, x) mask.

    With ``bridge_gap``, masks one empty slice apart also join when they overlap in-plane
    (after a one-pixel in-plane dilation); the labels cover ``mask`` only.
    """
    full = np.asarray(mask, bool)
    out = np.zeros(full.shape, np.int32)
    if not full.any():
        return out
    box = tuple(
        slice(max(0, int(idx.min()) - 1), int(idx.max()) + 2)
        for idx in (np.flatnonzero(full.any(axis=axes)) for axes in ((1, 2), (0, 2), (0, 1)))
    )
    out[box] = _link(full[box], bridge_gap)
    return out


def _link(mask: np.ndarray, bridge_gap: bool) -> np.ndarray:
    joined = mask
    if bridge_gap and mask.shape[0] > 2:
        grown = ndimage.binary_dilation(mask, np.ones((1, 3, 3), bool))
        joined = mask.copy()
        joined[1:-1] |= grown[:-2] & grown[2:]
    labels, _ = ndimage.label(joined, structure=np.ones((3, 3, 3), bool))
    labels[~mask] = 0
    # renumber 1..n in order of first appearance
    ids = np.unique(labels[labels > 0])
    lut = np.zeros(int(labels.max()) + 1, np.int32)
    lut[ids] = np.arange(1, len(ids) + 1)
    return lut[labels]
