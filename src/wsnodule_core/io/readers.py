"""``read_volume``: one entry point for DICOM series folders, NIfTI, NRRD and MetaImage files."""

from __future__ import annotations

import os
from pathlib import Path

import pydicom
import SimpleITK as sitk
from pydicom.misc import is_dicom

from wsnodule_core.errors import (
    InputPathNotFoundError,
    NonFiniteValuesError,
    UnsupportedFormatError,
    VolumeReadError,
)
from wsnodule_core.io.dicom_series import ProgressCallback, read_dicom_series
from wsnodule_core.io.formats import FORMATS, check_header_spacing, format_of, scan_nifti
from wsnodule_core.io.sitk_bridge import from_sitk
from wsnodule_core.io.volume import Volume, VolumeMetadata


def read_image_file(path: str | os.PathLike) -> Volume:
    """Read a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mhd + .raw, .mha) volume.

    Values keep the file's data type (NIfTI ``scl_slope``/``scl_inter`` applied by ITK, which may
    give float). The modality is unknown (``metadata.modality`` is None, taken as CT).
    """
    path = Path(path)
    if not path.is_file():
        raise InputPathNotFoundError(f"{path}: no such file. Check the path.")
    fmt = format_of(path)
    if fmt is None:
        raise UnsupportedFormatError(
            f"{path}: not a volume format wsnodule reads. Use {', '.join(FORMATS)} or a DICOM series folder."
        )
    check_header_spacing(path, fmt)
    scan = scan_nifti(path) if fmt == "nifti" else None
    if scan is not None and (bad := scan.non_finite):
        raise NonFiniteValuesError(
            f"{path}: {bad} voxel(s) are NaN or infinite. Replace them (for CT, with -1024 HU outside the "
            "body) and save the file again."
        )
    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise VolumeReadError(
            f"{path}: SimpleITK cannot read this {fmt} file ({str(exc).strip().splitlines()[-1]}). The file "
            "is damaged or truncated; export it again."
        ) from exc
    metadata = VolumeMetadata(source_path=str(path), source_format=fmt)
    return from_sitk(image, metadata)


def read_volume(
    path: str | os.PathLike,
    *,
    series_uid: str | None = None,
    progress: ProgressCallback | None = None,
) -> Volume:
    """Read a 3D volume with its geometry.

    Parameters
    ----------
    path
        A folder holding a DICOM series (or a single DICOM slice); a DICOM file (its series, in its
        folder, is read); or a NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage
        (.mhd with .raw, .mha) file.
    series_uid
        SeriesInstanceUID to read when the DICOM folder holds several series.
    progress
        Called with the fraction of DICOM slices decoded; raise from it to cancel.

    Returns
    -------
    Volume
        See :func:`wsnodule_core.io.dicom_series.read_dicom_series` for DICOM conventions.

    Raises
    ------
    VolumeReadError, InvalidVolumeError
        Subclasses naming the file and what to do; see ``docs/io.md``.

    Examples
    --------
    >>> from wsnodule_core import read_volume
    >>> ct = read_volume("LIDC-IDRI-0001/")            # doctest: +SKIP
    >>> ct.shape, ct.spacing                             # doctest: +SKIP
    ((133, 512, 512), (2.5, 0.703125, 0.703125))
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise InputPathNotFoundError(
            f"{path}: no such file or folder. Give a DICOM series folder or a NIfTI/NRRD/MetaImage file."
        )
    if path.is_dir():
        return read_dicom_series(path, series_uid=series_uid, progress=progress)
    if format_of(path) is not None:
        return read_image_file(path)
    if is_dicom(path):
        if series_uid is None:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"])
            series_uid = str(header.get("SeriesInstanceUID", "")) or None
        return read_dicom_series(path.parent, series_uid=series_uid, progress=progress)
    raise UnsupportedFormatError(
        f"{path}: not a volume format wsnodule reads (neither DICOM nor {', '.join(FORMATS)}). Give a "
        "DICOM series folder or convert the image to NIfTI."
    )
