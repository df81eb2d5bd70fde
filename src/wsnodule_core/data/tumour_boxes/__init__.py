"""Tumour boxes: Lung-PET-CT-Dx's per-slice PASCAL-VOC boxes as 3D boxes in world coordinates.

``read_tumour_boxes`` reads the collection; ``series_boxes`` places one series' files on its volume;
``write_tumour_boxes`` / ``read_tumour_boxes_json`` keep them in a JSON file. PW4MedSeg takes them
through :func:`wsnodule_core.pw4medseg.world_boxes.boxes_on_grid` (see ``docs/data.md``).
"""

from wsnodule_core.data.tumour_boxes.boxes import (
    SeriesBoxes,
    SliceBox,
    WorldBox,
    contiguous_runs,
    index_box_to_world,
    tumour_boxes,
)
from wsnodule_core.data.tumour_boxes.json_file import read_tumour_boxes_json, write_tumour_boxes
from wsnodule_core.data.tumour_boxes.lung_pet_ct_dx import (
    annotation_id,
    default_root,
    index_slices,
    read_tumour_boxes,
    series_boxes,
)
from wsnodule_core.data.tumour_boxes.voc import VocBox, read_voc_boxes

__all__ = ["SeriesBoxes", "SliceBox", "VocBox", "WorldBox", "annotation_id", "contiguous_runs", "default_root",
           "index_box_to_world", "index_slices", "read_tumour_boxes", "read_tumour_boxes_json", "read_voc_boxes",
           "series_boxes", "tumour_boxes", "write_tumour_boxes"]
