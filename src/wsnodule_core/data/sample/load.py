"""The real sample shipped in the package: a crop of LIDC-IDRI-0001 (CC BY 3.0) with its nodule label."""

from __future__ import annotations

import dataclasses
import json
from contextlib import ExitStack
from dataclasses import dataclass
from importlib import resources

from wsnodule_core.data.sample.build import CT_FILE, INFO_FILE, LABEL_FILE, SAMPLE_FILES
from wsnodule_core.errors import DataNotAvailableError, GeometryMismatchError
from wsnodule_core.io.volume import Volume

SAMPLE_PACKAGE = "wsnodule_core.data.sample"
SAMPLE_FOLDER = "lidc_idri_0001"


@dataclass(frozen=True, eq=False)
class LidcSample:
    """The sample: ``ct`` (int16 HU), ``label`` (uint8, 1 = nodule, the readers' 50 % consensus) on the
    same grid, and ``info`` (sample.json: source UIDs, crop box, nodule, how it was made, attribution)."""

    ct: Volume
    label: Volume
    info: dict


def sample_folder():
    """The shipped sample's folder (an ``importlib.resources`` Traversable)."""
    return resources.files(SAMPLE_PACKAGE) / SAMPLE_FOLDER


def load_lidc_sample() -> LidcSample:
    """Read the shipped LIDC-IDRI-0001 crop.

    Raises
    ------
    DataNotAvailableError
        When the package was installed without its sample files.
    """
    from wsnodule_core.io.readers import read_volume

    folder = sample_folder()
    missing = [name for name in SAMPLE_FILES if not folder.joinpath(name).is_file()]
    if missing:
        raise DataNotAvailableError(f"the shipped sample is missing {missing} in {folder}; reinstall "
                                    "napari-wsnodule, or rebuild it with 'wsnodule data sample --out DIR'.")
    info = json.loads(folder.joinpath(INFO_FILE).read_text())
    with ExitStack() as stack:
        ct = read_volume(stack.enter_context(resources.as_file(folder.joinpath(CT_FILE))))
        label = read_volume(stack.enter_context(resources.as_file(folder.joinpath(LABEL_FILE))))
    if not ct.same_geometry(label):
        raise GeometryMismatchError(f"the shipped sample's label grid ({label.shape}, origin {label.origin}) is not "
                                    f"its CT's ({ct.shape}, origin {ct.origin}); rebuild it.")
    return LidcSample(_with_identity(ct, info), _with_identity(label, info), info)


def _with_identity(volume: Volume, info: dict) -> Volume:
    """``volume`` with the source scan's identity (NIfTI keeps none), from sample.json."""
    metadata = dataclasses.replace(volume.metadata, modality="CT", patient_id=info["patient_id"],
                                   study_uid=info["study_uid"], series_uid=info["series_uid"],
                                   source_format="wsnodule-sample",
                                   extra={"crop_start_zyx": tuple(info["crop_box"]["start_zyx"])})
    return Volume(volume.array, volume.spacing, volume.origin, volume.direction, metadata)
