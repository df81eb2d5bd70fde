"""Trachea and main bronchi: find the trachea near the top of the lungs and follow it down slice by slice."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

Spacing = tuple[float, float, float]


@dataclass(frozen=True)
class AirwayParameters:
    """Limits of the slice-by-slice airway tracking (all physical)."""

    lumen_hu: float = -900.0
    trachea_min_area_mm2: float = 60.0
    trachea_max_area_mm2: float = 900.0
    trachea_max_offset_fraction: float = 0.1
    search_fraction: float = 0.4
    track_tolerance_mm: float = 4.0
    max_growth: float = 2.0
    bronchus_max_mm: float = 40.0
    strictest_lumen_hu: float = -990.0
    threshold_step_hu: float = 15.0
    branch_min_area_mm2: float = 15.0
    leak_max_mm: float = 10.0


@dataclass
class _Branch:
    region: np.ndarray  # 2D mask in the previous slice
    area: int
    carina_z: int | None  # slice of the split below which this branch is a bronchus
    leak_slices: int = 0  # consecutive slices clipped after a leak


def _find_trachea(
    core: np.ndarray, body: np.ndarray, order: list[int], spacing: Spacing, p: AirwayParameters
) -> tuple[int, np.ndarray] | None:
    """The topmost slice with a round-ish, midline lumen of trachea size, and its 2D mask."""
    pixel_mm2 = spacing[1] * spacing[2]
    slices = [z for z in order if core[z].any()]
    for z in slices[: max(1, int(round(len(slices) * p.search_fraction)))]:
        labels, count = ndimage.label(core[z])
        body_x = np.flatnonzero(body[z].any(axis=0))
        if count == 0 or body_x.size == 0:
            continue
        body_cx = 0.5 * (body_x[0] + body_x[-1])
        width = body_x[-1] - body_x[0] + 1
        best, best_offset = None, np.inf
        for index, sl in enumerate(ndimage.find_objects(labels), start=1):
            comp = labels[sl] == index
            area = int(comp.sum())
            if not p.trachea_min_area_mm2 <= area * pixel_mm2 <= p.trachea_max_area_mm2:
                continue
            if area < 0.4 * comp.size:  # not a compact cross-section
                continue
            cx = 0.5 * (sl[1].start + sl[1].stop - 1)
            offset = abs(cx - body_cx)
            if offset <= p.trachea_max_offset_fraction * width and offset < best_offset:
                best, best_offset = index, offset
        if best is not None:
            return z, labels == best
    return None


def track_airways(
    hu: np.ndarray,
    air: np.ndarray,
    body: np.ndarray,
    spacing: Spacing,
    superior_is_up: bool,
    p: AirwayParameters,
) -> np.ndarray:
    """Mask of the trachea and main bronchi lumen (``hu < lumen_hu``) inside ``air``.

    Starting from the trachea, each branch is followed to the next slice through the lumen
    components that overlap it (within ``track_tolerance_mm``). A component more than
    ``max_growth`` times the branch's previous area is a leak into the lung: the slice is tried
    again with stricter thresholds (down to ``strictest_lumen_hu``) and a leak that remains ends
    the branch; when the trachea splits the children are bronchi and end ``bronchus_max_mm``
    below the split. Returns an empty mask when no trachea is found.
    """
    core = (hu < p.lumen_hu) & air
    airways = np.zeros_like(core)
    nz = core.shape[0]
    order = list(range(nz - 1, -1, -1)) if superior_is_up else list(range(nz))
    found = _find_trachea(core, body, order, spacing, p)
    if found is None:
        return airways
    z0, seed = found
    airways[z0] = seed
    branches = [_Branch(seed, int(seed.sum()), None)]
    radius = max(1, int(np.ceil(p.track_tolerance_mm / min(spacing[1], spacing[2]))))
    pixel_mm2 = spacing[1] * spacing[2]
    min_pixels = max(1, int(np.ceil(p.branch_min_area_mm2 / pixel_mm2)))
    disk = ndimage.iterate_structure(ndimage.generate_binary_structure(2, 1), radius)
    thresholds = np.arange(p.lumen_hu, p.strictest_lumen_hu - 1e-6, -p.threshold_step_hu)
    for z in order[order.index(z0) + 1 :]:
        if not branches:
            break
        labelled: dict[float, np.ndarray] = {}
        children: list[_Branch] = []
        for branch in branches:
            if branch.carina_z is not None and abs(z - branch.carina_z) * spacing[0] > p.bronchus_max_mm:
                continue
            probe = ndimage.binary_dilation(branch.region, structure=disk)
            footprint = ndimage.binary_dilation(branch.region)
            # A leak (the lumen running into lung at this threshold) is retried with stricter
            # thresholds; a large component that only grazes the probe (nearby lung) is ignored.
            attempts = []
            for threshold in thresholds:
                if threshold not in labelled:
                    labelled[threshold] = ndimage.label((hu[z] < threshold) & air[z])[0]
                labels = labelled[threshold]
                kept: list[tuple[np.ndarray, int, bool]] = []
                leaking: list[np.ndarray] = []
                for i in np.unique(labels[probe]):
                    if i == 0:
                        continue
                    comp = labels == i
                    area = int(comp.sum())
                    if area > p.max_growth * max(branch.area, 1) or area * pixel_mm2 > p.trachea_max_area_mm2:
                        if (comp & footprint).any():
                            leaking.append(comp)
                    elif area >= min_pixels:
                        kept.append((comp, area, False))
                attempts.append((kept, leaking))
                if not leaking:
                    break
            kept, leaking = attempts[-1] if not attempts[-1][1] else attempts[0]
            # Lumens right under the branch win over ones only within the tolerance (the esophagus).
            direct = [item for item in kept if (item[0] & footprint).any()]
            kept = direct if direct else kept
            # A leak at every threshold (a bronchus opening into the lung in-plane) is clipped to
            # the branch's own footprint for at most ``leak_max_mm`` along z.
            if (branch.leak_slices + 1) * spacing[0] <= p.leak_max_mm:
                for comp in leaking:
                    clipped = comp & footprint
                    if clipped.sum() >= min_pixels:
                        kept.append((clipped, branch.area, True))
            splits = branch.carina_z is None and len(kept) >= 2
            for comp, area, leak in kept:
                if any(np.count_nonzero(comp & child.region) > 0.5 * comp.sum() for child in children):
                    continue
                leaks = branch.leak_slices + 1 if leak else 0
                children.append(_Branch(comp, area, z if splits else branch.carina_z, leaks))
        branches = children
        for branch in branches:
            airways[z] |= branch.region
    return airways
