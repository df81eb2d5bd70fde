"""A procedural chest CT phantom: body, bones, mediastinum, lungs with vessel and airway trees, CT noise.

See ``docs/phantom.md``. Nodules are not part of the phantom; they are inserted
inside ``Phantom.lungs`` by :mod:`wsnodule_core.data.insertion`.
"""

from wsnodule_core.data.phantom.anatomy import ChestAnatomy
from wsnodule_core.data.phantom.phantom import (
    HU,
    LABEL_AIR,
    LABEL_AIRWAY,
    LABEL_BONE,
    LABEL_FAT,
    LABEL_HEART,
    LABEL_LUNG,
    LABEL_MUSCLE,
    LABEL_NAMES,
    LABEL_VESSEL,
    Phantom,
    make_phantom,
    phantom_lung_mask,
    vessel_distance_mm,
)
from wsnodule_core.data.phantom.vessels import TreeSegments

__all__ = [
    "HU",
    "LABEL_AIR",
    "LABEL_AIRWAY",
    "LABEL_BONE",
    "LABEL_FAT",
    "LABEL_HEART",
    "LABEL_LUNG",
    "LABEL_MUSCLE",
    "LABEL_NAMES",
    "LABEL_VESSEL",
    "ChestAnatomy",
    "Phantom",
    "TreeSegments",
    "make_phantom",
    "phantom_lung_mask",
    "vessel_distance_mm",
]
