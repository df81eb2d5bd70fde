"""The one real sample shipped in the package: a crop of LIDC-IDRI-0001 around its nodule (CC BY 3.0).

:func:`load_lidc_sample` reads it; :func:`build_lidc_sample` (``wsnodule data sample``) rebuilds it from
the LIDC-IDRI DICOM files; :func:`crop_volume` cuts a box of a scan with its world geometry.
"""

from wsnodule_core.data.sample.build import (
    MAX_SAMPLE_BYTES,
    SAMPLE_FILES,
    CropChoice,
    SampleBuild,
    SampleSettings,
    build_lidc_sample,
    choose_crop,
)
from wsnodule_core.data.sample.crop import CropBox, crop_volume, region_box, z_window
from wsnodule_core.data.sample.load import LidcSample, load_lidc_sample, sample_folder

__all__ = [
    "MAX_SAMPLE_BYTES",
    "SAMPLE_FILES",
    "CropBox",
    "CropChoice",
    "LidcSample",
    "SampleBuild",
    "SampleSettings",
    "build_lidc_sample",
    "choose_crop",
    "crop_volume",
    "load_lidc_sample",
    "region_box",
    "sample_folder",
    "z_window",
]
