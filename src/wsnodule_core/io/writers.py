"""Write volumes and masks to NIfTI, NRRD or MetaImage with their geometry, never overwriting silently.

Files are written into a temporary folder beside the target and then renamed into place (data file
before header), so a crash or a full disk never leaves a half-written file under the final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import SimpleITK as sitk
from pydicom.misc import is_dicom

from wsnodule_core.errors import (
    InvalidVolumeError,
    OutputExistsError,
    OutputIsInputError,
    UnwritableOutputError,
)
from wsnodule_core.io.formats import format_of, require_format
from wsnodule_core.io.sitk_bridge import to_sitk
from wsnodule_core.io.volume import Volume, check_mask_matches


def _refuse_existing(path: Path) -> OutputExistsError:
    return OutputExistsError(
        f"{path} already exists; wsnodule does not overwrite files. Choose another path or pass "
        "overwrite=True to replace it."
    )


def check_output_path(path: str | os.PathLike, overwrite: bool) -> Path:
    """The output path as a Path, after refusing an existing file unless ``overwrite`` and a folder
    that cannot be written to (:func:`check_writable_folder`)."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise OutputExistsError(f"{path} is a folder; give a file name to write to.")
    if path.exists() and not overwrite:
        raise _refuse_existing(path)
    check_writable_folder(path.parent, str(path))
    return path


def check_writable_folder(folder: str | os.PathLike, what: str) -> Path:
    """Refuse, before any work, a folder that cannot be created or written to.

    The deepest existing folder on the way to ``folder`` must be a folder in which a file can be
    created (tried with a hidden file, removed at once: permissions, ACLs and read-only disks all
    count). Nothing is created. ``what`` names the output in the message (e.g. ``"--maps"``).
    """
    folder = Path(folder).expanduser()
    existing = folder.absolute()
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UnwritableOutputError(
            f"{what}: cannot write to {folder}, because {existing} is a file, not a folder. Choose another "
            "output location."
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".wsnodule-write-test-", dir=existing)
    except OSError as error:
        raise UnwritableOutputError(
            f"{what}: cannot write to {folder} ({error.strerror or error} in {existing}). Choose a folder you "
            "can write to, or fix its permissions."
        ) from error
    os.close(fd)
    os.unlink(probe)
    return folder


def _series_folder(source: Path) -> Path | None:
    """The folder a DICOM input is read from (the folder itself, or a DICOM file's folder)."""
    if source.is_dir():
        return source
    if source.is_file() and format_of(source) is None and is_dicom(source):
        return source.parent
    return None


def check_not_input(output: str | os.PathLike, inputs: Iterable[str | os.PathLike]) -> None:
    """Refuse an output that is one of the ``inputs`` (also through a symbolic or hard link), or lies
    inside an input DICOM series folder: writing it would replace or change what the user gave."""
    out = Path(output).expanduser().resolve()
    for given in inputs:
        source = Path(given).expanduser().resolve()
        if out == source or (out.exists() and source.exists() and os.path.samefile(out, source)):
            raise OutputIsInputError(
                f"{output} is the input {given}; wsnodule never writes over its input, even with --overwrite. "
                "Give another output path."
            )
        series = _series_folder(source)
        if series is not None and out.is_relative_to(series):
            raise OutputIsInputError(
                f"{output} lies inside the input DICOM series folder {series}; write outputs outside the "
                "series, so it stays as it was exported (e.g. beside the folder)."
            )


def write_atomically(path: Path, overwrite: bool, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` in a temporary folder beside ``path``, then move the result(s) in place.

    Every file ``write`` creates is moved (for .mhd/.nhdr that is the header and its data file);
    any of them that already exists is refused unless ``overwrite``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=".wsnodule-tmp-", dir=path.parent))
    try:
        write(tmp_dir / path.name)
        produced = sorted(tmp_dir.iterdir(), key=lambda p: p.name == path.name)  # header last
        for p in produced:
            target = path.parent / p.name
            if target.exists() and not overwrite:
                raise _refuse_existing(target)
        for p in produced:
            os.replace(p, path.parent / p.name)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def _write_image(image: sitk.Image, path: Path, overwrite: bool, compress: bool) -> Path:
    def write(tmp: Path) -> None:
        sitk.WriteImage(image, str(tmp), useCompression=compress)

    return write_atomically(path, overwrite, write)


def write_volume(
    volume: Volume, path: str | os.PathLike, *, overwrite: bool = False, compress: bool = False
) -> Path:
    """Write ``volume`` to NIfTI (.nii, .nii.gz), NRRD (.nrrd, .nhdr) or MetaImage (.mhd, .mha).

    The array's data type is kept; the geometry is written as given (NIfTI stores it as float32).
    ``compress`` gzips NRRD/MetaImage data (.nii.gz is always compressed). Parent folders are
    created. Returns the path written.
    """
    path = check_output_path(path, overwrite)
    require_format(path, "write")
    return _write_image(to_sitk(volume), path, overwrite, compress)


def mask_storage_array(mask: np.ndarray, where: str = "mask") -> np.ndarray:
    """The mask as uint8 (labels 0..255) or uint16 (labels up to 65535); refuses other values."""
    array = np.asarray(mask)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if array.size == 0:
        return array.astype(np.uint8)
    lo, hi = array.min(), array.max()
    if array.dtype.kind == "f" and not (np.isfinite(array).all() and np.all(array == np.rint(array))):
        raise InvalidVolumeError(
            f"{where}: a mask must hold integer labels, but it has fractional or non-finite values "
            f"({lo}..{hi}). Threshold probabilities (e.g. p >= 0.5) before writing a mask."
        )
    if lo < 0 or hi > np.iinfo(np.uint16).max:
        raise InvalidVolumeError(
            f"{where}: mask labels must be in 0..65535, got {lo}..{hi}. Relabel the mask before writing."
        )
    return array.astype(np.uint8 if hi <= 255 else np.uint16)


def write_mask(
    mask: np.ndarray | Volume,
    reference: Volume,
    path: str | os.PathLike,
    *,
    overwrite: bool = False,
    compress: bool = True,
) -> Path:
    """Write a label mask on ``reference``'s grid, with its geometry, as uint8 (or uint16 above 255).

    Parameters
    ----------
    mask
        An array of ``reference.shape`` or a Volume with the same geometry (0 background, labels > 0).
    reference
        The CT the mask belongs to: its spacing, origin and direction are written with the mask.
    path
        ``.nii.gz``, ``.nii``, ``.nrrd``, ``.mhd`` or ``.mha``.
    overwrite
        Replace an existing file (refused otherwise, with :class:`~wsnodule_core.errors.OutputExistsError`).
    compress
        Gzip NRRD/MetaImage data (masks compress well).

    Returns
    -------
    Path
        The file written.

    Examples
    --------
    >>> from wsnodule_core import read_volume, write_mask
    >>> ct = read_volume("scan.nii.gz")                          # doctest: +SKIP
    >>> write_mask(ct.array > 200, ct, "bright.nii.gz")           # doctest: +SKIP
    """
    array = mask_storage_array(check_mask_matches(mask, reference), "mask")
    path = check_output_path(path, overwrite)
    require_format(path, "write")
    return _write_image(to_sitk(reference, array), path, overwrite, compress)
