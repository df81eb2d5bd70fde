"""File formats by extension, and header checks for what SimpleITK would silently 'fix'.

ITK reads a NIfTI ``pixdim`` of 0 as 1 mm and turns a negative NIfTI/MetaImage/NRRD spacing into
a flipped axis. Both hide a damaged header, so the spacing is checked in the header itself first.
ITK also reads a NIfTI file cut short as complete (the missing voxels become 0) and lets gzip's
errors through, so the NIfTI payload is counted against its header first (:func:`scan_nifti`).
"""

from __future__ import annotations

import gzip
import os
import re
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from wsnodule_core.errors import (
    DamagedImageError,
    InputPathNotFoundError,
    InvalidSpacingError,
    TruncatedImageError,
    UnsupportedFormatError,
)

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


_GZIP_MAGIC = b"\x1f\x8b"


def _what_it_looks_like(start: bytes) -> str:
    head = start.lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head", b"<body")):
        return "it looks like a web page (HTML), e.g. a login or error page saved instead of the image"
    if head.startswith(b"{"):
        return "it looks like a JSON text"
    return f"it starts with the bytes {start[:12]!r}"


def _open_nifti(path: Path) -> BinaryIO:
    """The NIfTI file's decompressed byte stream: gzip when the data is gzip, plain otherwise (a plain
    NIfTI saved as .nii.gz reads as ITK reads it); anything else is refused."""
    with open(path, "rb") as f:
        start = f.read(64)
    if start.startswith(_GZIP_MAGIC):
        return gzip.open(path, "rb")
    if not _nifti_endian(start) and path.name.lower().endswith(".gz"):
        raise DamagedImageError(
            f"{path}: this file is neither gzip-compressed (as .nii.gz says) nor a NIfTI image; "
            f"{_what_it_looks_like(start)}. Download or export the image again."
        )
    return open(path, "rb")


def _nifti_endian(header: bytes) -> str | None:
    """``"<"`` or ``">"`` when ``header`` starts a NIfTI-1/-2 header (sizeof_hdr 348/540), else None."""
    if len(header) < 4:
        return None
    for endian in ("<", ">"):
        if struct.unpack(endian + "i", header[:4])[0] in (348, 540):
            return endian
    return None


def _not_nifti(path: Path, header: bytes) -> DamagedImageError:
    return DamagedImageError(
        f"{path}: not a NIfTI image (no NIfTI header); {_what_it_looks_like(header)}. Download or export "
        "the image again."
    )


def _check_nifti(path: Path) -> None:
    with _open_nifti(path) as f:
        header = _read_or_refuse(path, f, 540)
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
_CHUNK = 1 << 22


def _cut_short(path: Path) -> TruncatedImageError:
    return TruncatedImageError(
        f"{path}: the file is cut short (it ends before all of its data; an interrupted download or "
        "copy). Download or export it again."
    )


def _read_or_refuse(path: Path, f: BinaryIO, size: int) -> bytes:
    """``f.read(size)``, with gzip's errors turned into :class:`TruncatedImageError` / :class:`DamagedImageError`."""
    try:
        return f.read(size)
    except EOFError as error:
        raise _cut_short(path) from error
    except (gzip.BadGzipFile, zlib.error) as error:
        raise DamagedImageError(
            f"{path}: the gzip data is damaged ({error}). Download or export the image again."
        ) from error


@dataclass(frozen=True)
class NiftiScan:
    """What :func:`scan_nifti` found: voxel bytes the header promises and holds, NaN/inf voxels."""

    expected_bytes: int
    found_bytes: int
    non_finite: int


def _nifti_layout(header: bytes, endian: str) -> tuple[int, int, str | None, int] | None:
    """``(voxel bytes, vox_offset, float dtype or None, header size)`` from a NIfTI-1/-2 header."""
    if struct.unpack(endian + "i", header[:4])[0] == 348:
        dims = struct.unpack(endian + "8h", header[40:56])
        code, bitpix = struct.unpack(endian + "2h", header[70:74])
        vox_offset, size = int(struct.unpack(endian + "f", header[108:112])[0]), 348
    else:
        code, bitpix = struct.unpack(endian + "2h", header[12:16])
        dims = struct.unpack(endian + "8q", header[16:80])
        vox_offset, size = int(struct.unpack(endian + "q", header[168:176])[0]), 540
    ndim = dims[0]
    if not 1 <= ndim <= 7 or any(d < 1 for d in dims[1 : ndim + 1]) or bitpix <= 0 or bitpix % 8:
        return None  # the reader reports such a header
    voxels = int(np.prod(dims[1 : ndim + 1], dtype=np.int64))
    dtype = _NIFTI_FLOAT_TYPES.get(code)
    return voxels * bitpix // 8, max(vox_offset, size), None if dtype is None else endian + dtype, size


def scan_nifti(path: Path) -> NiftiScan | None:
    """Count a NIfTI file's voxel bytes (and its NaN/inf voxels when float) against its header.

    Raises :class:`TruncatedImageError` when the data ends early (ITK would read the missing voxels
    as 0), :class:`DamagedImageError` when the file is not gzip or NIfTI. None when the header is
    too damaged to say (the reader then reports it).
    """
    with _open_nifti(path) as f:
        header = _read_or_refuse(path, f, 540)
        endian = _nifti_endian(header)
        if endian is None:
            raise _not_nifti(path, header)
        layout = _nifti_layout(header, endian)
        if layout is None:
            return None
        expected, offset, dtype, _ = layout
        compressed = isinstance(f, gzip.GzipFile)
        if not compressed and dtype is None:  # plain integer data: the file size says it all
            found = max(os.path.getsize(path) - offset, 0)
            if found < expected:
                raise _cut_short(path)
            return NiftiScan(expected, found, 0)
        f.seek(0)
        _read_or_refuse(path, f, offset)
        found = bad = 0
        item = np.dtype(dtype).itemsize if dtype else 1
        while found < expected:
            chunk = _read_or_refuse(path, f, min(_CHUNK, expected - found))
            if not chunk:
                break
            found += len(chunk)
            if dtype is not None:
                usable = len(chunk) - len(chunk) % item
                bad += int(np.count_nonzero(~np.isfinite(np.frombuffer(chunk[:usable], dtype=dtype))))
    if found < expected:
        raise _cut_short(path)
    return NiftiScan(expected, found, bad)
