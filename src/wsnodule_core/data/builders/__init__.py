"""Build nodule data-set folders (images, label maps, lung masks, ``dataset.json``): the front door.

* :func:`build_dataset`: phantom or hybrid sets, real LIDC nodule shapes inserted into
  procedural phantoms or real CTs (:mod:`~wsnodule_core.data.builders.inserted`);
* :func:`build_lidc_dataset`: LIDC-IDRI scans, nodules and slice labels
  (:mod:`~wsnodule_core.data.builders.lidc`);
* :func:`build_lidc_voi_dataset`: the real LIDC nodule VOIs and nodule-free real lung crops, split
  by patient (:mod:`~wsnodule_core.data.builders.lidc_vois`);
* :func:`build_luna16_dataset`: LUNA16 nodule patches (:mod:`~wsnodule_core.data.builders.luna16`).

Each returns a :class:`DatasetInfo`; read the folder back with
:func:`wsnodule_core.data.dataset.load_dataset`.
"""

from __future__ import annotations

from wsnodule_core.data.builders.common import DatasetInfo
from wsnodule_core.data.builders.inserted import build_dataset
from wsnodule_core.data.builders.lidc import build_lidc_dataset
from wsnodule_core.data.builders.lidc_vois import build_lidc_voi_dataset
from wsnodule_core.data.builders.luna16 import build_luna16_dataset

__all__ = ["DatasetInfo", "build_dataset", "build_lidc_dataset", "build_lidc_voi_dataset", "build_luna16_dataset"]
