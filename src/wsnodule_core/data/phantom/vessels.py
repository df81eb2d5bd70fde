"""Branching vessel and airway trees and their partial-volume rasterisation.

Trees grow by recursive volume division (after Kitaoka et al., J Appl Physiol
1999): a branch heads from its start towards the centroid of the lung region it
feeds, the region is cut in two through its centroid across its longest axis
(perpendicular to the branch), and each half gets a child whose radius follows
Murray's law, ``r_parent**3 = r_1**3 + r_2**3`` with flow proportional to the
volume fed. Regions are represented by random points sampled uniformly in the
lung, so the tree is random but fills the lung like a real one; the recursion is
vectorised level by level (no per-branch Python work).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True, eq=False)
class TreeSegments:
    """Curved tube segments in world ``(x, y, z)`` mm (quadratic Bezier curves).

    ``parent[i]`` is the index of segment ``i``'s parent (-1 for roots),
    ``kind`` is 0 artery, 1 vein, 2 airway (then ``radius`` is the outer radius
    and ``lumen_radius`` the air lumen), ``side`` +1 left lung, -1 right lung.
    """

    start: np.ndarray
    control: np.ndarray
    end: np.ndarray
    radius: np.ndarray
    lumen_radius: np.ndarray
    parent: np.ndarray
    kind: np.ndarray
    side: np.ndarray

    def __len__(self) -> int:
        return int(self.radius.shape[0])

    @property
    def length(self) -> np.ndarray:
        """Chord length of each segment in mm."""
        return np.linalg.norm(self.end - self.start, axis=1)


def concat_segments(parts: list[TreeSegments]) -> TreeSegments:
    offsets = np.cumsum([0] + [len(p) for p in parts[:-1]])
    parent = [np.where(p.parent >= 0, p.parent + o, -1) for p, o in zip(parts, offsets)]
    fields = {f: np.concatenate([getattr(p, f) for p in parts]) for f in
              ("start", "control", "end", "radius", "lumen_radius", "kind", "side")}
    return TreeSegments(parent=np.concatenate(parent), **fields)


def sample_region(
    inside: Callable[[np.ndarray], np.ndarray], low, high, n: int, rng: np.random.Generator
) -> np.ndarray:
    """``n`` points uniform in the region where ``inside(points)`` is true, within the box ``[low, high]``."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    found: list[np.ndarray] = []
    total = 0
    while total < n:
        pts = rng.uniform(low, high, size=(3 * n, 3))
        pts = pts[inside(pts)]
        found.append(pts)
        total += len(pts)
    return np.concatenate(found)[:n]


def grow_tree(
    root: np.ndarray,
    points: np.ndarray,
    root_radius: float,
    rng: np.random.Generator,
    *,
    min_points: int = 4,
    min_radius: float = 0.45,
    length_fraction: float = 0.55,
    tortuosity: float = 0.12,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Grow one tree by volume division; return ``(start, control, end, radius, parent)``."""
    pts = np.asarray(points, float)
    group = np.zeros(len(pts), dtype=np.int64)
    starts = np.asarray(root, float)[None, :]
    radius = np.array([root_radius])
    parent_of_group = np.array([-1])
    out_s, out_e, out_r, out_p = [], [], [], []
    n_out = 0
    for _ in range(64):
        if len(pts) == 0:
            break
        n_groups = len(starts)
        counts = np.bincount(group, minlength=n_groups).astype(float)
        cent = np.stack([np.bincount(group, pts[:, k], n_groups) for k in range(3)], 1) / counts[:, None]
        rel = pts - cent[group]
        vec = cent - starts
        dist = np.linalg.norm(vec, axis=1)
        direction = vec / np.maximum(dist, 1e-6)[:, None]
        along = np.einsum("ij,ij->i", rel, direction[group])
        spread = np.sqrt(np.bincount(group, along * along, n_groups) / counts)
        leaf = (counts < 2 * min_points) | (radius * 0.79 < min_radius)
        step = np.where(leaf, dist + 0.8 * spread, np.clip(length_fraction * dist, 2.0 * radius, 0.9 * dist))
        step = np.maximum(step, 0.5)
        ends = starts + direction * step[:, None]
        out_s.append(starts)
        out_e.append(ends)
        out_r.append(radius)
        out_p.append(parent_of_group)
        seg_index = n_out + np.arange(n_groups)
        n_out += n_groups
        # split every non-leaf region across its widest axis perpendicular to the branch
        cov = np.empty((n_groups, 3, 3))
        for i in range(3):
            for j in range(i, 3):
                cov[:, i, j] = cov[:, j, i] = np.bincount(group, rel[:, i] * rel[:, j], n_groups) / counts
        proj = np.eye(3)[None] - direction[:, :, None] * direction[:, None, :]
        cov = proj @ cov @ proj
        axis = np.linalg.eigh(cov)[1][:, :, -1]
        keep = ~leaf[group]
        side = np.einsum("ij,ij->i", rel, axis[group]) > 0
        key = 2 * group + side
        pts, key = pts[keep], key[keep]
        if len(pts) == 0:
            break
        # relabel the non-empty halves 0..n-1 without sorting
        child_counts = np.bincount(key, minlength=2 * n_groups).astype(float)
        present = np.flatnonzero(child_counts)
        relabel = np.cumsum(child_counts > 0) - 1
        group = relabel[key]
        parent_groups = present // 2
        child_counts = child_counts[present]
        radius = radius[parent_groups] * (child_counts / counts[parent_groups]) ** (1.0 / 3.0)
        starts = ends[parent_groups]
        parent_of_group = seg_index[parent_groups]
    start, end = np.concatenate(out_s), np.concatenate(out_e)
    radius, parent = np.concatenate(out_r), np.concatenate(out_p)
    # gentle curvature: move each segment's midpoint sideways by a random fraction of its length
    chord = end - start
    length = np.linalg.norm(chord, axis=1, keepdims=True)
    jitter = rng.normal(size=chord.shape)
    jitter -= np.einsum("ij,ij->i", jitter, chord)[:, None] * chord / np.maximum(length, 1e-6) ** 2
    control = 0.5 * (start + end) + tortuosity * length * jitter / np.sqrt(2.0)
    return start, control, end, radius, parent


def airways_along(arteries: TreeSegments, min_artery_radius: float = 1.2) -> TreeSegments:
    """Bronchi that run beside the arteries (the broncho-arterial pairs of real lungs).

    Each bronchus has the outer radius of its artery and a lumen of 65 % of it; it
    is shifted sideways by the sum of both radii plus 0.5 mm. A segment's start
    takes its parent's end shift so the airway tree stays connected.
    """
    keep = arteries.radius >= min_artery_radius
    chord = arteries.end - arteries.start
    chord /= np.maximum(np.linalg.norm(chord, axis=1, keepdims=True), 1e-6)
    ref = np.where(np.abs(chord[:, 2:3]) > 0.9, [[1.0, 0.0, 0.0]], [[0.0, 0.0, 1.0]])
    perp = np.cross(chord, ref)
    perp /= np.linalg.norm(perp, axis=1, keepdims=True)
    shift = perp * (2.0 * arteries.radius + 0.5)[:, None]
    start_shift = np.where((arteries.parent >= 0)[:, None], shift[np.maximum(arteries.parent, 0)], shift)
    index = np.flatnonzero(keep)
    new_index = -np.ones(len(arteries), dtype=np.int64)
    new_index[index] = np.arange(len(index))
    parent = arteries.parent[index]
    parent = np.where(parent >= 0, new_index[np.maximum(parent, 0)], -1)
    start = arteries.start[index] + start_shift[index]
    end = arteries.end[index] + shift[index]
    return TreeSegments(
        start=start,
        control=arteries.control[index] + 0.5 * (start_shift[index] + shift[index]),
        end=end,
        radius=arteries.radius[index].copy(),
        lumen_radius=0.65 * arteries.radius[index],
        parent=parent,
        kind=np.full(len(index), 2, dtype=np.uint8),
        side=arteries.side[index].copy(),
    )


# --- rasterisation -----------------------------------------------------------


@dataclass(frozen=True)
class Grid:
    """An axis-aligned voxel grid: ``origin`` world (x, y, z) of voxel [0,0,0], ``spacing`` (z, y, x)."""

    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]

    def axes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """World z, y, x coordinates (mm) of the voxel centres along each axis."""
        axes = [self.origin[2 - i] + self.spacing[i] * np.arange(self.shape[i]) for i in range(3)]
        return tuple(a.astype(np.float32) for a in axes)  # type: ignore[return-value]


def sample_curves(
    segs: TreeSegments, radius: np.ndarray, step: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Points every ``step`` mm along each segment: ``(points xyz, radius, step actually used)``."""
    length = segs.length * 1.05 + 1e-6
    n = np.maximum(np.ceil(length / step).astype(np.int64), 1)
    seg = np.repeat(np.arange(len(n)), n)
    first = np.cumsum(n) - n
    t = ((np.arange(n.sum()) - first[seg]) + 0.5) / n[seg]
    t = t[:, None]
    pts = (1 - t) ** 2 * segs.start[seg] + 2 * t * (1 - t) * segs.control[seg] + t**2 * segs.end[seg]
    return pts, radius[seg], (length / n)[seg]


def rasterise_tubes(
    segs: TreeSegments, radius: np.ndarray, grid: Grid, *, max_pairs: int = 3_000_000
) -> np.ndarray:
    """Partial-volume occupancy (0..1, float32) of the union of tubes of ``radius`` along ``segs``.

    Tubes at least 0.7 voxel wide in-plane are stamped as unions of spheres with a
    soft edge one voxel wide along each direction; thinner ones deposit their
    volume (``pi r^2`` per mm) into the 8 nearest voxels (trilinear weights), so
    a sub-voxel vessel raises its voxels' values by the right partial volume.
    """
    sz, sy, sx = grid.spacing
    h = min(sy, sx)
    thick = radius >= 0.7 * h
    step = np.where(thick, np.maximum(0.5 * radius, 0.3), 0.5 * min(sz, h))
    pts, rad, used = sample_curves(segs, radius, step)
    idx = (pts[:, ::-1] - np.asarray(grid.origin)[::-1]) / np.asarray(grid.spacing)  # z, y, x
    shape = np.asarray(grid.shape)
    margin = 1 + rad[:, None] / np.asarray(grid.spacing)
    inside = np.all((idx > -margin) & (idx < shape - 1 + margin), axis=1)
    idx, rad, used = idx[inside], rad[inside], used[inside]
    occ = np.zeros(int(np.prod(shape)), dtype=np.float32)
    is_thick = rad >= 0.7 * h
    # thin tubes: mass deposition
    ti, tr, tu = idx[~is_thick], rad[~is_thick], used[~is_thick]
    if len(ti):
        vol = (np.pi * tr * tr * tu / (sz * sy * sx)).astype(np.float64)
        base = np.floor(ti).astype(np.int64)
        frac = ti - base
        flats, weights = [], []
        for corner in range(8):
            off = np.array([(corner >> 2) & 1, (corner >> 1) & 1, corner & 1])
            w = np.prod(np.where(off, frac, 1 - frac), axis=1) * vol
            c = base + off
            ok = np.all((c >= 0) & (c < shape), axis=1)
            flats.append(np.ravel_multi_index(tuple(c[ok].T), grid.shape))
            weights.append(w[ok])
        acc = np.bincount(np.concatenate(flats), np.concatenate(weights), occ.size)
        occ = np.minimum(acc, 1.0).astype(np.float32)
        del acc
    # thick tubes: soft-edged spheres, grouped by stencil size
    bi, br = idx[is_thick], rad[is_thick]
    if len(bi):
        sp = np.asarray(grid.spacing)
        k = np.ceil((br[:, None] + sp) / sp).astype(np.int64)  # half stencil per axis
        keys, inverse = np.unique(k, axis=0, return_inverse=True)
        inverse = inverse.ravel()
        for g, kk in enumerate(keys):
            sel = np.flatnonzero(inverse == g)
            ranges = [np.arange(-q, q + 1) for q in kk]
            offs = np.stack(np.meshgrid(*ranges, indexing="ij"), -1).reshape(-1, 3)
            chunk = max(1, max_pairs // len(offs))
            for c0 in range(0, len(sel), chunk):
                s = sel[c0 : c0 + chunk]
                centre = np.round(bi[s]).astype(np.int64)
                vox = centre[:, None, :] + offs[None]
                delta = (vox - bi[s][:, None, :]) * sp  # mm
                d = np.sqrt((delta**2).sum(-1))
                width = np.sqrt(((delta * sp) ** 2).sum(-1)) / np.maximum(d, 1e-6)
                width = np.where(d > 1e-6, width, h)
                val = np.clip(0.5 + (br[s][:, None] - d) / width, 0.0, 1.0)
                ok = np.all((vox >= 0) & (vox < shape), axis=-1) & (val > 0)
                flat = np.ravel_multi_index(tuple(vox[ok].T), grid.shape)
                np.maximum.at(occ, flat, val[ok].astype(np.float32))
    return occ.reshape(grid.shape)
