"""File formats by extension, and header checks for what SimpleITK would silently 'fix'.

ITK reads a NIfTI ``pixdim`` of 0 as 1 mm and turns a negative NIfTI/MetaImage/NRRD spacing into
a flipped axis. Both hide a damaged header, so the spacing is checked in the header itself first.
"""

from __future__ import annotations

import gzip
import re
import struct
from pathlib import Path

import numpy as np

from wsnodule_core.errors import InputPathNotFoundError, InvalidSpacingError, UnsupportedFormatError

FORMATS: dict[str, str] = {
    ".nii.gz": "nifti",
    ".nii": "nifti",
    ".nrrd": "nrrd",
    ".nhdr": "nrrd",
    ".mhd": "metaimage",
    ".mha": "metaimage",
}
"""Volume file extensions read and written, and the format name kept in ``metadata.source_format``."""


def format_of(path: Path) -> str | None:
    """The format name for ``path``'s extension, or None when it is not a volume file format."""
    name = path.name.lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    return None


def require_format(path: Path, action: str) -> str:
    fmt = format_of(path)
    if fmt is None:
        raise UnsupportedFormatError(
            f"{path}: cannot {action} this file type. Use one of {', '.join(FORMATS)} "
            "(or a folder holding a DICOM series when reading)."
        )
    return fmt


def _bad_spacing(path: Path, values: list[float], field: str) -> InvalidSpacingError:
    return InvalidSpacingError(
        f"{path}: the header gives voxel spacing {values} ({field}); every spacing must be a positive "
        "number of millimetres. Fix the header (or export the image again) before using it."
    )


def _check_nifti(path: Path) -> None:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        header = f.read(540)
    if len(header) < 348:
        return  # let the reader report the damaged file
    for endian in ("<", ">"):
        sizeof_hdr = struct.unpack(endian + "i", header[:4])[0]
        if sizeof_hdr == 348:  # NIfTI-1
            ndim = struct.unpack(endian + "h", header[40:42])[0]
            pixdim = struct.unpack(endian + "8f", header[76:108])
            break
        if sizeof_hdr == 540:  # NIfTI-2
            ndim = struct.unpack(endian + "q", header[16:24])[0]
            pixdim = struct.unpack(endian + "8d", header[104:168])
            break
    else:
        return
    spatial = [float(v) for v in pixdim[1 : 1 + min(max(ndim, 0), 3)]]
    if not all(np.isfinite(v) and v > 0 for v in spatial):
        raise _bad_spacing(path, spatial, "NIfTI pixdim")


def _text_header(path: Path) -> str:
    with open(path, "rb") as f:
        raw = f.read(1 << 16)
    if path.suffix.lower() in (".nrrd", ".mha"):  # header then binary data in one file
        end = raw.find(b"\n\n") if path.suffix.lower() == ".nrrd" else raw.find(b"ElementDataFile")
        raw = raw[: end + 200] if end >= 0 else raw
    return raw.decode("latin-1")


def _check_metaimage(path: Path) -> None:
    header = _text_header(path)
    match = re.search(r"^\s*ElementSpacing\s*=\s*(.+)$", header, re.MULTILINE)
    if match:
        values = [float(v) for v in match.group(1).split()]
        if not all(np.isfinite(v) and v > 0 for v in values):
            raise _bad_spacing(path, values, "MetaImage ElementSpacing")
    data = re.search(r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", header, re.MULTILINE)
    if data and data.group(1) not in ("LOCAL", "LIST") and not data.group(1).startswith("%"):
        raw = path.parent / data.group(1)
        if not raw.exists():
            raise InputPathNotFoundError(
                f"{path}: its data file {raw.name} (ElementDataFile) is missing. Keep the .mhd and .raw "
                "files together in one folder."
            )


def _check_nrrd(path: Path) -> None:
    header = _text_header(path)
    match = re.search(r"^spacings:\s*(.+)$", header, re.MULTILINE)
    if match:
        values = [float(v) for v in match.group(1).split() if v.lower() not in ("nan",)]
        if not all(np.isfinite(v) and v > 0 for v in values):
            raise _bad_spacing(path, values, "NRRD spacings")
    match = re.search(r"^space directions:\s*(.+)$", header, re.MULTILINE)
    if match:
        vectors = re.findall(r"\(([^)]*)\)", match.group(1))
        norms = [float(np.linalg.norm([float(v) for v in vec.split(",")])) for vec in vectors]
        if not all(np.isfinite(v) and v > 0 for v in norms):
            raise _bad_spacing(path, norms, "NRRD space directions")


def check_header_spacing(path: Path, fmt: str) -> None:
    """Raise :class:`InvalidSpacingError` when the file's header gives a zero or negative spacing."""
    {"nifti": _check_nifti, "metaimage": _check_metaimage, "nrrd": _check_nrrd}[fmt](path)


_NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes FLOAT32, FLOAT64


def nifti_non_finite_count(path: Path) -> int:
    """How many NaN/inf voxels a float NIfTI-1 file holds (ITK's reader turns NaN into 0 silently)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        header = f.read(348)
        if len(header) < 348:
            return 0
        endian = "<" if struct.unpack("<i", header[:4])[0] == 348 else ">"
        if struct.unpack(endian + "i", header[:4])[0] != 348:
            return 0  # NIfTI-2: not checked
        dtype = _NIFTI_FLOAT_TYPES.get(struct.unpack(endian + "h", header[70:72])[0])
        if dtype is None:
            return 0
        vox_offset = int(struct.unpack(endian + "f", header[108:112])[0])
        f.read(max(vox_offset - 348, 0))
        data = np.frombuffer(f.read(), dtype=endian + dtype)
    return int(np.count_nonzero(~np.isfinite(data)))
