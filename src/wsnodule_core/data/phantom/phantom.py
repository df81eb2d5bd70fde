"""``make_phantom``: a procedural chest CT with lungs, vessel and airway trees, bones and CT noise."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from wsnodule_core.data.phantom import anatomy as an
from wsnodule_core.data.phantom.noise import KERNELS, blur, ct_noise
from wsnodule_core.data.phantom.texture import grid_texture, world_field
from wsnodule_core.data.phantom.vessels import (
    Grid,
    TreeSegments,
    airways_along,
    concat_segments,
    grow_tree,
    rasterise_tubes,
    sample_region,
)
from wsnodule_core.errors import DimensionError, InvalidSpacingError, PhantomParameterError
from wsnodule_core.io.volume import Volume, VolumeMetadata

# tissue codes of Phantom.labels
LABEL_AIR = 0
LABEL_FAT = 1
LABEL_MUSCLE = 2  # muscle and other soft tissue (chest wall, liver below the diaphragm)
LABEL_BONE = 3
LABEL_HEART = 4  # heart, great vessels, oesophagus, hilar vessels outside the lungs
LABEL_LUNG = 5  # lung parenchyma
LABEL_VESSEL = 6  # vessels inside the lungs
LABEL_AIRWAY = 7  # trachea and bronchi: lumen and wall
LABEL_NAMES = {
    LABEL_AIR: "air",
    LABEL_FAT: "fat",
    LABEL_MUSCLE: "muscle/soft tissue",
    LABEL_BONE: "bone",
    LABEL_HEART: "heart/mediastinum",
    LABEL_LUNG: "lung parenchyma",
    LABEL_VESSEL: "vessel",
    LABEL_AIRWAY: "airway",
}

# nominal Hounsfield units before blur and noise
HU = {
    "air": -1000.0,
    "fat": -100.0,
    "muscle": 40.0,
    "liver": 55.0,
    "blood": 40.0,
    "blood_contrast": 250.0,
    "cortical": 700.0,
    "marrow": 250.0,
    "disc": 90.0,
    "canal": 20.0,
    "lung": -870.0,
    "vessel": 40.0,
}


@dataclass(frozen=True, eq=False)
class Phantom:
    """A synthetic chest CT and its ground-truth anatomy, all on ``volume``'s grid.

    Masks are boolean ``(z, y, x)`` arrays. ``lungs`` (= ``left_lung | right_lung``)
    includes the vessels and airways inside the lungs, like a lung segmentation;
    ``vessels`` are the intrapulmonary vessels (occupancy >= 0.5); ``labels`` holds
    the tissue codes ``LABEL_*`` (see ``LABEL_NAMES``). ``vessel_tree`` and
    ``airway_tree`` are the centre lines in world (x, y, z) mm.
    """

    volume: Volume
    lungs: np.ndarray
    left_lung: np.ndarray
    right_lung: np.ndarray
    vessels: np.ndarray
    airways: np.ndarray
    body: np.ndarray
    labels: np.ndarray
    vessel_tree: TreeSegments
    airway_tree: TreeSegments
    seed: int


def phantom_lung_mask(phantom: Phantom) -> np.ndarray:
    """The lung mask of ``phantom`` (both lungs, vessels inside them included)."""
    return phantom.lungs


def vessel_distance_mm(phantom: Phantom) -> np.ndarray:
    """Distance (mm, float32) from each voxel to the nearest vessel voxel (0 on vessels).

    Computed on demand (a Euclidean distance transform, about a second for
    256 x 256 x 64); useful to place juxtavascular or isolated nodules.
    """
    if not phantom.vessels.any():
        return np.full(phantom.vessels.shape, np.inf, dtype=np.float32)
    distance = ndimage.distance_transform_edt(~phantom.vessels, sampling=phantom.volume.spacing)
    return distance.astype(np.float32)


def _check(shape, spacing, slice_thickness_mm, noise_sd_hu, kernel, dtype) -> tuple:
    try:
        shape_t = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        shape_t = ()
    if len(shape_t) != 3 or min(shape_t) < 1 or any(int(s) != s for s in shape):
        raise DimensionError(f"make_phantom: shape must be three positive integers (z, y, x), got {shape!r}.")
    try:
        spacing_t = tuple(float(s) for s in spacing)
    except (TypeError, ValueError):
        spacing_t = ()
    if len(spacing_t) != 3 or not all(np.isfinite(s) and s > 0 for s in spacing_t):
        raise InvalidSpacingError(
            f"make_phantom: spacing must be three positive millimetre values (z, y, x), got {spacing!r}."
        )
    if kernel not in KERNELS:
        raise PhantomParameterError(f"make_phantom: kernel must be one of {sorted(KERNELS)}, got {kernel!r}.")
    if not (np.isfinite(noise_sd_hu) and noise_sd_hu >= 0):
        raise PhantomParameterError(f"make_phantom: noise_sd_hu must be >= 0 HU, got {noise_sd_hu!r}.")
    thickness = spacing_t[0] if slice_thickness_mm is None else float(slice_thickness_mm)
    if not (np.isfinite(thickness) and thickness > 0):
        raise PhantomParameterError(
            f"make_phantom: slice_thickness_mm must be a positive number of mm (or None for the z spacing), "
            f"got {slice_thickness_mm!r}."
        )
    if np.dtype(dtype) not in (np.dtype(np.int16), np.dtype(np.float32)):
        raise PhantomParameterError(f"make_phantom: dtype must be int16 or float32, got {dtype!r}.")
    return shape_t, spacing_t, thickness


def build_trees(
    chest: an.ChestAnatomy, seed: int, *, points_per_tree: int = 30000
) -> tuple[TreeSegments, TreeSegments]:
    """The vessel (arteries + veins) and airway trees of the chest; they depend only on ``seed``."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 1]))
    vessels: list[TreeSegments] = []
    airways: list[TreeSegments] = []
    for side in (-1, 1):
        roots = an.hilum_roots(chest, side)
        low = [0.0 if side > 0 else -chest.cavity_half_width, -100.0, -170.0]
        high = [chest.cavity_half_width if side > 0 else 0.0, 110.0, chest.lung_apex_z]
        low, high = np.minimum(low, high), np.maximum(low, high)

        def inside(p: np.ndarray, side: int = side) -> np.ndarray:
            return an.lung_sdf(chest, p[:, 0], p[:, 1], p[:, 2], side) < -2.0

        for kind, root_radius in ((0, 6.5), (1, 6.0)):
            key = "artery" if kind == 0 else "vein"
            pts = sample_region(inside, low, high, points_per_tree, rng)
            start, control, end, radius, parent = grow_tree(roots[key], pts, root_radius, rng)
            # the feeding vessel from the heart to the hilum
            feed = np.vstack([roots[key + "_feed"], roots[key][None]])
            f_start, f_end = feed[:-1], feed[1:]
            n_feed = len(f_start)
            tree = TreeSegments(
                start=np.vstack([f_start, start]),
                control=np.vstack([0.5 * (f_start + f_end), control]),
                end=np.vstack([f_end, end]),
                radius=np.concatenate([np.full(n_feed, root_radius + 1.0), radius]),
                lumen_radius=np.zeros(n_feed + len(radius)),
                parent=np.concatenate(
                    [np.arange(n_feed) - 1, np.where(parent >= 0, parent + n_feed, n_feed - 1)]
                ),
                kind=np.full(n_feed + len(radius), kind, dtype=np.uint8),
                side=np.full(n_feed + len(radius), side, dtype=np.int8),
            )
            vessels.append(tree)
            if kind == 0:
                bronchi = airways_along(
                    TreeSegments(start, control, end, radius, np.zeros_like(radius), parent,
                                 np.zeros(len(radius), np.uint8), np.full(len(radius), side, np.int8))
                )
                main = TreeSegments(  # main bronchus from the carina to this lung's bronchial tree
                    start=roots["bronchus_feed"], control=0.5 * (roots["bronchus_feed"] + bronchi.start[:1]),
                    end=bronchi.start[:1], radius=np.array([7.5]), lumen_radius=np.array([6.0]),
                    parent=np.array([-1]), kind=np.array([2], np.uint8), side=np.array([side], np.int8),
                )
                airways.append(concat_segments([main, bronchi]))
    trachea = an.trachea_path(chest)
    airways.insert(0, TreeSegments(
        start=trachea[:1], control=trachea.mean(0, keepdims=True), end=trachea[1:], radius=np.array([9.5]),
        lumen_radius=np.array([7.5]), parent=np.array([-1]), kind=np.array([2], np.uint8),
        side=np.array([0], np.int8),
    ))
    return concat_segments(vessels), concat_segments(airways)


def _occupancy(sdf: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction from a signed distance: a linear ramp one voxel wide."""
    return np.clip(0.5 - sdf / width, 0.0, 1.0).astype(np.float32)


def _series_uid(seed: int, shape, spacing, extras: tuple) -> str:
    digest = hashlib.sha256(repr(("wsnodule-phantom", seed, shape, spacing, extras)).encode()).digest()
    return "2.25." + str(uuid.UUID(bytes=digest[:16]).int)


def make_phantom(
    shape: Sequence[int],
    spacing: Sequence[float],
    *,
    seed: int,
    slice_thickness_mm: float | None = None,
    noise_sd_hu: float = 20.0,
    kernel: str = "soft",
    contrast: bool = False,
    z_centre_mm: float = 0.0,
    dtype: str | type = "int16",
    chest: an.ChestAnatomy | None = None,
) -> Phantom:
    """Draw a synthetic chest CT on the grid ``shape`` (z, y, x) with ``spacing`` (z, y, x) mm.

    Parameters
    ----------
    shape, spacing
        The voxel grid. The anatomy is fixed in millimetres (a 340 x 250 mm chest,
        lungs about 26 cm tall) and centred in the field of view, so two grids
        covering the same field of view show the same chest at different
        resolutions. The field of view is ``shape * spacing``.
    seed
        Everything random (vessel trees, textures, noise) derives from it: the
        same arguments give bitwise identical arrays.
    slice_thickness_mm
        Width of the slice sensitivity profile; defaults to the z spacing.
    noise_sd_hu
        Standard deviation of the CT noise (HU) in a uniform region.
    kernel
        ``'soft'`` (smooth, correlated noise, PSF FWHM 1.2 mm) or ``'sharp'`` (lung
        kernel: crisp, fine-grained noise, PSF FWHM 0.6 mm).
    contrast
        Contrast-enhanced blood (+250 HU in the heart and great vessels) instead of +40.
    z_centre_mm
        Height of the field of view's centre above the middle of the lungs; the
        default covers hila, heart and lung bases for a 16 cm field.
    dtype
        ``int16`` (rounded HU, as scanners store them) or ``float32``.
    chest
        Anatomy sizes; ``ChestAnatomy()`` by default.

    Returns
    -------
    Phantom
        The CT volume (identity direction, origin at the field of view's corner
        in LPS: column index grows to the patient's left, row to the back, slice
        to the head) with its masks, tissue labels and centre-line trees.
    """
    shape_t, spacing_t, thickness = _check(shape, spacing, slice_thickness_mm, noise_sd_hu, kernel, dtype)
    chest = chest or an.ChestAnatomy()
    seed = int(seed)
    fov = np.asarray(shape_t, float) * np.asarray(spacing_t)  # z, y, x
    origin = (
        -fov[2] / 2 + spacing_t[2] / 2,
        -fov[1] / 2 + spacing_t[1] / 2,
        z_centre_mm - fov[0] / 2 + spacing_t[0] / 2,
    )
    grid = Grid(shape_t, spacing_t, origin)
    zc, yc, xc = grid.axes()
    z, y, x = zc[:, None, None], yc[None, :, None], xc[None, None, :]
    width = float(min(spacing_t[1:]))
    streams = np.random.SeedSequence([seed, 0]).spawn(3)
    rng_texture, rng_fine, rng_noise = (np.random.default_rng(s) for s in streams)

    # --- tissues, painted from the outside in; each layer has a partial-volume occupancy
    hu = np.full(shape_t, HU["air"], dtype=np.float32)
    labels = np.zeros(shape_t, dtype=np.uint8)

    def paint(occ: np.ndarray, value, label: int | None) -> None:
        nonlocal hu
        occ = np.broadcast_to(occ, shape_t)
        hu += occ * (np.asarray(value, dtype=np.float32) - hu)
        if label is not None:
            labels[occ >= 0.5] = label

    shading = world_field(rng_texture, grid, lattice_mm=10.0, sigma_mm=25.0)
    body_d = an.body_sdf(chest, x, y)
    body_occ = _occupancy(body_d, width)
    paint(body_occ, HU["fat"] + 8.0 * shading, LABEL_FAT)
    paint(_occupancy(body_d + an.fat_thickness(chest, x), width), HU["muscle"] + 6.0 * shading, LABEL_MUSCLE)
    cavity_d = an.cavity_sdf(chest, x, y, z)
    paint(_occupancy(cavity_d, width), HU["liver"] + 5.0 * shading, LABEL_MUSCLE)
    med_d = np.maximum(an.mediastinum_sdf(chest, x, y, z), cavity_d)
    med_occ = _occupancy(med_d, width)
    paint(med_occ, HU["fat"] + 10.0 * shading, LABEL_FAT)
    blood = HU["blood_contrast"] if contrast else HU["blood"]
    paint(_occupancy(an.heart_sdf(chest, x, y, z), width), blood, LABEL_HEART)

    left_d = an.lung_sdf(chest, x, y, z, +1)
    right_d = an.lung_sdf(chest, x, y, z, -1)
    lung_occ = _occupancy(np.minimum(left_d, right_d), width)
    span = chest.cavity_half_depth
    gravity = 35.0 * (y - chest.cavity_centre_y) / span  # supine: the back is denser
    lung_hu = HU["lung"] + gravity + 15.0 * world_field(rng_texture, grid)
    lung_hu += 12.0 * grid_texture(rng_fine, grid)
    paint(lung_occ, lung_hu, LABEL_LUNG)

    # --- bones
    for sdf in (an.rib_sdf, an.sternum_sdf, an.vertebra_sdf):
        paint(_occupancy(sdf(chest, x, y, z), width) * body_occ, HU["cortical"], LABEL_BONE)
        paint(_occupancy(sdf(chest, x, y, z, marrow=True), width) * body_occ, HU["marrow"], None)
    back = chest.cavity_centre_y + chest.cavity_half_depth
    phase = np.mod(z - chest.carina_z, chest.rib_pitch)
    disc = np.minimum(phase, chest.rib_pitch - phase) < 2.5
    disc_occ = _occupancy(an.superellipse_sdf(x, y, 0.0, back - 25.0, 19.0, 16.0, 2.2), width) * disc
    paint(disc_occ, HU["disc"], LABEL_MUSCLE)
    paint(_occupancy(an.canal_sdf(chest, x, y), width), HU["canal"], LABEL_MUSCLE)

    # --- great vessels, then the intrapulmonary trees
    for path, radius in an.great_vessel_paths(chest):
        segs = TreeSegments(path[:-1], 0.5 * (path[:-1] + path[1:]), path[1:], np.full(len(path) - 1, radius),
                            np.zeros(len(path) - 1), np.arange(len(path) - 1) - 1,
                            np.zeros(len(path) - 1, np.uint8), np.zeros(len(path) - 1, np.int8))
        occ = rasterise_tubes(segs, segs.radius, grid) * med_occ
        paint(occ, HU["muscle"] if radius < 8 else blood, LABEL_HEART)  # the narrow one is the oesophagus
    vessel_tree, airway_tree = build_trees(chest, seed)
    inside_chest = np.minimum(lung_occ + med_occ, 1.0)
    vessel_occ = rasterise_tubes(vessel_tree, vessel_tree.radius, grid) * inside_chest
    hilar = vessel_occ * (med_occ > lung_occ)
    paint(vessel_occ, np.where(med_occ > lung_occ, blood, HU["vessel"]), None)
    lungs_region = np.minimum(left_d, right_d) < 0
    vessels = (vessel_occ >= 0.5) & lungs_region
    labels[vessels] = LABEL_VESSEL
    labels[(hilar >= 0.5) & ~lungs_region] = LABEL_HEART
    wall_occ = rasterise_tubes(airway_tree, airway_tree.radius, grid) * inside_chest
    lumen_occ = rasterise_tubes(airway_tree, airway_tree.lumen_radius, grid) * inside_chest
    paint(wall_occ, HU["muscle"], None)
    paint(lumen_occ, HU["air"], None)
    airways = wall_occ >= 0.5
    labels[airways] = LABEL_AIRWAY
    vessels &= ~airways

    # --- scanner: slice profile, PSF, noise
    image = blur(hu, grid, KERNELS[kernel], thickness)
    image += ct_noise(rng_noise, grid, float(noise_sd_hu), KERNELS[kernel], thickness)
    out_dtype = np.dtype(dtype)
    if out_dtype == np.int16:
        image = np.clip(np.rint(image), -32768, 32767).astype(np.int16)
    else:
        image = image.astype(np.float32)

    uid = _series_uid(seed, shape_t, spacing_t, (thickness, float(noise_sd_hu), kernel, bool(contrast),
                                                  float(z_centre_mm), out_dtype.name, repr(chest)))
    metadata = VolumeMetadata(
        modality="CT",
        patient_id=f"PHANTOM-{seed}",
        series_uid=uid,
        source_format="phantom",
        extra={
            "seed": seed,
            "kernel": kernel,
            "slice_thickness_mm": thickness,
            "noise_sd_hu": float(noise_sd_hu),
            "contrast": bool(contrast),
            "labels": dict(LABEL_NAMES),
        },
    )
    volume = Volume(image, spacing_t, origin, np.eye(3), metadata)
    left = left_d < 0
    right = right_d < 0
    return Phantom(
        volume=volume,
        lungs=left | right,
        left_lung=left,
        right_lung=right,
        vessels=vessels,
        airways=airways,
        body=np.broadcast_to(body_d < 0, shape_t).copy(),
        labels=labels,
        vessel_tree=vessel_tree,
        airway_tree=airway_tree,
        seed=seed,
    )
