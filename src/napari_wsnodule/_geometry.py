"""A Volume's geometry as napari layer keywords, so layers line up in world millimetres."""

from __future__ import annotations

from typing import Any

import numpy as np

from wsnodule_core.io.volume import Volume


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
