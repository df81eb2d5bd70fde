"""A Volume's geometry as napari layer keywords and back, so layers line up in world millimetres."""

from __future__ import annotations

from typing import Any

import numpy as np

from wsnodule_core.errors import GeometryMismatchError
from wsnodule_core.io.volume import Volume

VOLUME_KEY = "wsnodule_volume"  # layer.metadata key holding the Volume a layer was made from


def layer_geometry(volume: Volume) -> dict[str, Any]:
    """``scale``/``translate`` (axis-aligned volumes) or ``affine`` (oblique ones), in (z, y, x) world mm.

    napari's world axes are taken as world (z, y, x) so that an axial CT shows as usual; a
    volume whose direction is not the identity gets the full affine instead of scale and translate.
    """
    if np.allclose(volume.direction, np.eye(3), atol=1e-6):
        return {"scale": tuple(volume.spacing), "translate": tuple(volume.origin[::-1])}
    index_to_world_xyz = volume.affine
    affine_zyx = np.eye(4)
    affine_zyx[:3, :] = index_to_world_xyz[:3, :][::-1]  # world rows (x, y, z) -> (z, y, x)
    return {"affine": affine_zyx}


def volume_of_layer(layer: Any) -> Volume:
    """The layer's data as a Volume with the layer's geometry.

    The Volume stored by the reader (``layer.metadata['wsnodule_volume']``) gives the metadata
    (modality, DICOM references) when its shape still matches; the geometry always comes from the
    layer's own transform, so a layer moved in napari exports where it is shown.
    """
    data = np.asarray(layer.data)
    if data.ndim != 3:
        raise GeometryMismatchError(
            f"layer {layer.name!r} has {data.ndim} dimensions; wsnodule works on 3D volumes (z, y, x).")
    stored = layer.metadata.get(VOLUME_KEY) if hasattr(layer, "metadata") else None
    from napari.utils.transforms import Affine

    inner = Affine(scale=layer.scale, translate=layer.translate, rotate=layer.rotate, shear=layer.shear)
    full = np.asarray(layer.affine.affine_matrix, dtype=float) @ np.asarray(inner.affine_matrix, dtype=float)
    linear, offset = full[:3, :3], full[:3, 3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0):
        raise GeometryMismatchError(f"layer {layer.name!r} has a zero scale; set its scale in mm per voxel.")
    # napari (z, y, x) world -> ITK (x, y, z): reverse rows and columns
    direction = (linear / spacing)[::-1, ::-1]
    origin = offset[::-1]
    metadata = stored.metadata if isinstance(stored, Volume) and stored.shape == data.shape else None
    kwargs = {"metadata": metadata} if metadata is not None else {}
    return Volume(data, spacing=tuple(spacing), origin=tuple(origin), direction=direction, **kwargs)


def mask_volume(labels: np.ndarray, reference: Volume) -> Volume:
    """A label array as a Volume on ``reference``'s grid (shapes must match)."""
    labels = np.asarray(labels)
    if labels.shape != reference.shape:
        raise GeometryMismatchError(
            f"the labels have shape {labels.shape} but the image has {reference.shape}; pick the image "
            "the labels were drawn on.")
    return reference.with_array(labels)
