"""The chest of the phantom as implicit shapes in world millimetres.

Coordinates are patient LPS: ``x`` grows to the patient's left, ``y`` to the
back (posterior), ``z`` to the head. The chest is centred on ``x = y = 0``;
``z = 0`` is the middle of the lungs (the carina is at ``z = +45``).

Every shape is an *approximate signed distance* in mm (negative inside),
evaluated on broadcastable coordinate arrays, so the same anatomy can be
sampled on any voxel grid or at scattered points (used to seed the vessel
trees). Distances are radial approximations; they are exact on the boundary
and good enough near it, which is all that partial-volume rendering needs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

Array = np.ndarray


@dataclass(frozen=True)
class ChestAnatomy:
    """Sizes (mm) of the default adult chest; change them for a smaller or larger patient."""

    body_half_width: float = 170.0  # 340 mm wide
    body_half_depth: float = 130.0  # 260 mm deep
    cavity_half_width: float = 135.0  # inner thoracic wall (pleura)
    cavity_half_depth: float = 92.0
    cavity_centre_y: float = -8.0
    lung_apex_z: float = 135.0
    right_dome_z: float = -65.0  # the liver pushes the right dome up
    left_dome_z: float = -80.0
    carina_z: float = 45.0
    rib_pitch: float = 24.0  # craniocaudal rib spacing at the back


def superellipse_sdf(x: Array, y: Array, cx: float, cy: float, a, b, p: float = 2.0) -> Array:
    """Radial signed distance to the superellipse ``|dx/a|^p + |dy/b|^p = 1`` (extruded along z)."""
    dx = x - cx
    dy = y - cy
    rho = ((np.abs(dx) / a) ** p + (np.abs(dy) / b) ** p) ** (1.0 / p)
    r = np.sqrt(dx * dx + dy * dy)
    return r * (1.0 - 1.0 / np.maximum(rho, 1e-6))


def ellipsoid_sdf(x: Array, y: Array, z: Array, centre, axes) -> Array:
    """Radial signed distance to an axis-aligned ellipsoid."""
    dx, dy, dz = x - centre[0], y - centre[1], z - centre[2]
    rho = np.sqrt((dx / axes[0]) ** 2 + (dy / axes[1]) ** 2 + (dz / axes[2]) ** 2)
    r = np.sqrt(dx * dx + dy * dy + dz * dz)
    return r * (1.0 - 1.0 / np.maximum(rho, 1e-6))


def body_sdf(a: ChestAnatomy, x: Array, y: Array) -> Array:
    """Skin surface; the back is flattened where the patient lies on the table."""
    d = superellipse_sdf(x, y, 0.0, 0.0, a.body_half_width, a.body_half_depth, 2.3)
    return np.maximum(d, y - (a.body_half_depth - 7.0))


def fat_thickness(a: ChestAnatomy, x: Array) -> Array:
    """Subcutaneous fat thickness (mm): thicker on the flanks."""
    return 12.0 + 10.0 * (x / a.body_half_width) ** 2


def cavity_sdf(a: ChestAnatomy, x: Array, y: Array, z: Array | float = -60.0) -> Array:
    """Inner thoracic wall (parietal pleura); the rib cage narrows by 12 % from its base to the apex."""
    narrowing = 1.0 - 0.12 * np.clip((z + 60.0) / 180.0, 0.0, 1.0)
    half_width = a.cavity_half_width * narrowing
    half_depth = a.cavity_half_depth * (0.5 + 0.5 * narrowing)
    return superellipse_sdf(x, y, 0.0, a.cavity_centre_y, half_width, half_depth, 2.2)


def mediastinum_sdf(a: ChestAnatomy, x: Array, y: Array, z: Array) -> Array:
    """Everything between the lungs: heart, great vessels, trachea, oesophagus and the spine's front."""
    slab = np.abs(x) - 8.0  # the thin anterior junction line
    upper = superellipse_sdf(x, y, -2.0, 15.0, 40.0, 70.0, 2.0)
    posterior = superellipse_sdf(x, y, 8.0, 65.0, 36.0, 30.0, 2.0)
    heart = heart_sdf(a, x, y, z)
    arch = ellipsoid_sdf(x, y, z, (5.0, 10.0, a.carina_z + 33.0), (40.0, 45.0, 22.0))
    return np.minimum(np.minimum(np.minimum(slab, upper), np.minimum(posterior, heart)), arch)


def heart_sdf(a: ChestAnatomy, x: Array, y: Array, z: Array) -> Array:
    """The heart: an ellipsoid resting on the diaphragm, shifted to the patient's left and front."""
    return ellipsoid_sdf(x, y, z, (18.0, -20.0, -45.0), (66.0, 55.0, 58.0))


def diaphragm_height(a: ChestAnatomy, x: Array, y: Array, side: int) -> Array:
    """z (mm) of the diaphragm dome under the lung on ``side`` (+1 left, -1 right)."""
    peak = a.left_dome_z if side > 0 else a.right_dome_z
    centre_x = 75.0 * side
    return peak - 75.0 * (((x - centre_x) / 105.0) ** 2 + ((y + 10.0) / 95.0) ** 2)


def lung_sdf(a: ChestAnatomy, x: Array, y: Array, z: Array, side: int) -> Array:
    """One lung (``side`` +1 = patient left, x > 0; -1 = right) as a signed distance in mm."""
    d = np.maximum(cavity_sdf(a, x, y, z), -mediastinum_sdf(a, x, y, z))
    d = np.maximum(d, -side * x)
    d = np.maximum(d, 0.7 * (diaphragm_height(a, x, y, side) - z))
    apex_centre_z = a.lung_apex_z - 115.0
    apex = ellipsoid_sdf(x, y, z, (62.0 * side, a.cavity_centre_y + 10.0, apex_centre_z), (72.0, 85.0, 115.0))
    return np.maximum(d, np.where(z > apex_centre_z, apex, -np.inf))


def rib_sdf(a: ChestAnatomy, x: Array, y: Array, z: Array, marrow: bool = False) -> Array:
    """The rib cage: twelve curved ribs per side that slope down towards the front.

    Each rib follows the chest wall 8 mm outside the pleura; along its course it
    drops 70 mm from the spine to the front, so an axial slice cuts several ribs
    obliquely, as in real CT.
    """
    dy = y - a.cavity_centre_y
    theta = np.arctan2(np.abs(x), dy) / np.pi  # 0 at the spine, 1 at the sternum
    zeta = z + 90.0 * theta**1.2  # constant along a rib
    top = a.lung_apex_z + 15.0
    k = np.clip(np.round((top - zeta) / a.rib_pitch), 0, 11)
    v = zeta - (top - k * a.rib_pitch)
    u = cavity_sdf(a, x, y, z) - 8.0
    half_u, half_v = (2.6, 3.6) if marrow else (4.2, 5.2)
    d = (np.sqrt((u / half_u) ** 2 + (v / half_v) ** 2) - 1.0) * half_u
    outside_arc = np.maximum(0.12 - theta, theta - 0.82) * 200.0  # ribs end before spine / cartilage
    return np.maximum(d, outside_arc)


def sternum_sdf(a: ChestAnatomy, x: Array, y: Array, z: Array, marrow: bool = False) -> Array:
    front = a.cavity_centre_y - a.cavity_half_depth - 8.0
    half = (11.0, 3.5) if marrow else (16.0, 7.0)
    d = superellipse_sdf(x, y, 0.0, front, half[0], half[1], 2.0)
    return np.maximum(d, np.maximum(z - (a.carina_z + 65.0), (a.carina_z - 105.0) - z))


def vertebra_sdf(a: ChestAnatomy, x: Array, y: Array, z: Array, marrow: bool = False) -> Array:
    """Vertebral bodies (with discs left out) and the posterior arch around the canal."""
    back = a.cavity_centre_y + a.cavity_half_depth
    grow = -3.0 if marrow else 0.0
    body = superellipse_sdf(x, y, 0.0, back - 25.0, 19.0 + grow, 16.0 + grow, 2.2)
    phase = np.mod(z - a.carina_z, a.rib_pitch)
    disc = np.minimum(phase, a.rib_pitch - phase) - 2.5  # > 0 inside bone, < 0 inside a disc
    body = np.maximum(body, -disc)
    ring_outer = superellipse_sdf(x, y, 0.0, back + 2.0, 15.0 + grow, 14.0 + grow, 2.0)
    canal = superellipse_sdf(x, y, 0.0, back + 2.0, 9.0, 8.0, 2.0)
    arch = np.maximum(ring_outer, -canal)
    spinous = np.maximum(np.abs(x) - 4.0 - grow, np.maximum(back + 12.0 - y, y - (back + 26.0)))
    transverse = np.maximum(np.abs(x) - 38.0, np.abs(y - (back + 2.0)) - 5.0 - grow)
    transverse = np.maximum(transverse, np.abs(phase - 0.5 * a.rib_pitch) - 5.0)
    arch = np.minimum(np.minimum(arch, spinous), transverse)
    return np.minimum(body, np.maximum(arch, -disc))


def canal_sdf(a: ChestAnatomy, x: Array, y: Array) -> Array:
    back = a.cavity_centre_y + a.cavity_half_depth
    return superellipse_sdf(x, y, 0.0, back + 2.0, 9.0, 8.0, 2.0)


def great_vessel_paths(a: ChestAnatomy) -> list[tuple[np.ndarray, float]]:
    """Centre lines (world x, y, z mm) and radii of the aorta, pulmonary trunk, cava and oesophagus."""
    c = a.carina_z
    paths = [
        (  # ascending aorta and arch
            np.array([[-12, -25, -20], [-12, -20, c + 15], [0, -5, c + 40], [20, 25, c + 40],
                      [28, 50, c + 20]]),
            13.0,
        ),
        (np.array([[28, 50, c + 20], [28, 58, -170]]), 11.0),  # descending aorta
        (np.array([[12, -40, -15], [10, -15, c - 15]]), 13.0),  # pulmonary trunk
        (np.array([[-30, -10, 200], [-30, -5, 0]]), 9.0),  # superior vena cava
        (np.array([[8, 52, 200], [10, 55, -170]]), 6.0),  # oesophagus
    ]
    return [(p.astype(float), r) for p, r in paths]


def trachea_path(a: ChestAnatomy) -> np.ndarray:
    return np.array([[0.0, 30.0, 250.0], [0.0, 30.0, a.carina_z]])


def hilum_roots(a: ChestAnatomy, side: int) -> dict[str, np.ndarray]:
    """Where the artery, vein and bronchus trees of one lung enter it, and where they come from."""
    c = a.carina_z
    s = float(side)
    trunk_top = np.array([10.0, -15.0, c - 15.0])
    atrium = np.array([15.0, 25.0, -30.0])
    return {
        "artery_feed": np.array([trunk_top, [10.0 + 25.0 * s, 5.0 + 5.0 * s, c - 10.0]]),
        "artery": np.array([57.0 * s, 20.0, c - 15.0 + 5.0 * (s > 0)]),
        "vein_feed": np.array([atrium]),
        "vein": np.array([52.0 * s, 22.0, -28.0]),
        "bronchus_feed": np.array([[0.0, 30.0, c]]),
    }
