"""A real nodule shape, independent of any scan: what the LIDC adapter hands to nodule insertion."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import numpy as np

TEXTURES = ("ground_glass", "part_solid", "solid")


def texture_class(texture_rating: float) -> str:
    """LIDC texture rating (1 = non-solid/ground glass ... 5 = solid) to a texture class.

    Ratings 1-2 are ground glass, 3-4 part-solid, 5 solid; a mean over readers is rounded first.
    """
    rating = int(round(float(texture_rating)))
    if rating <= 2:
        return "ground_glass"
    if rating <= 4:
        return "part_solid"
    return "solid"


@dataclass(frozen=True, eq=False)
class NoduleShape:
    """A binary nodule mask on its own small grid, with where it came from.

    ``mask`` is a boolean (z, y, x) array tightly around the nodule (a margin of a few
    voxels is allowed), sampled at ``spacing`` (z, y, x) millimetres. ``volume_mm3`` and
    ``diameter_mm`` describe the shape on *that* grid (the reference for the insertion's
    10 % volume check). ``ratings`` holds the mean reader ratings (texture, malignancy,
    spiculation, ...), ``texture_rating`` the mean texture rating (1..5).
    """

    mask: np.ndarray
    spacing: tuple[float, float, float]
    diameter_mm: float
    volume_mm3: float
    texture_rating: float
    annotation_ids: tuple[int, ...] = ()
    patient_id: str = ""
    series_uid: str = ""
    ratings: Mapping[str, float] = field(default_factory=dict)

    @property
    def texture(self) -> str:
        return texture_class(self.texture_rating)

    @property
    def shape_id(self) -> str:
        """A stable identifier of the shape: its source annotations (used to keep splits apart)."""
        return "lidc-" + "-".join(str(i) for i in sorted(self.annotation_ids)) if self.annotation_ids else ""
