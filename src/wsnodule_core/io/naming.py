"""Names a person can read for a volume: patient, series description and date, never a bare UID.

The napari plugin names its CT layers with :func:`volume_name` and the layers it derives from a CT
with :func:`derived_name`; both are pure functions of the metadata the readers produce
(:class:`~wsnodule_core.io.volume.VolumeMetadata`, DICOM fields in ``extra``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import PurePath

from wsnodule_core.io.formats import FORMATS
from wsnodule_core.io.volume import VolumeMetadata

SEPARATOR = " · "
#: The name when neither the metadata nor the path gives anything readable.
DEFAULT_NAME = "CT"
_UID = re.compile(r"^[0-9]+(\.[0-9]+){3,}$")  # DICOM UIDs: digits in four or more dot-separated parts
_DICOM_DATE = re.compile(r"^([0-9]{4})([0-9]{2})([0-9]{2})$")


@dataclass(frozen=True)
class VolumeName:
    """A volume's display name (``full``) and the short form its derived layers start with (``short``)."""

    full: str
    short: str


def is_uid(text: str) -> bool:
    """True when ``text`` is a DICOM UID (``1.2.840.…``): meaningless to a reader."""
    return bool(_UID.match(text.strip()))


def dicom_date(value: str | None) -> str | None:
    """A DICOM date (DA, ``YYYYMMDD``) as ``YYYY-MM-DD``; None when empty or not a DA value.

    Examples
    --------
    >>> dicom_date("20000101")
    '2000-01-01'
    """
    match = _DICOM_DATE.match((value or "").strip())
    if match is None:
        return None
    year, month, day = match.groups()
    if not (1 <= int(month) <= 12 and 1 <= int(day) <= 31):
        return None
    return f"{year}-{month}-{day}"


def path_name(path: str | os.PathLike | None) -> str | None:
    """A file's or folder's name without its volume extension, skipping folders named by a UID
    (LIDC-IDRI keeps series in ``<patient>/<study UID>/<series UID>/``, so that gives ``<patient>``);
    None when every part of the path is a UID or the path is empty."""
    if path is None or not str(path).strip():
        return None
    for part in reversed(PurePath(path).parts):
        name = part
        for suffix in FORMATS:
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
                break
        name = name.strip().strip("/\\")
        if name and not is_uid(name) and name not in (".", ".."):
            return name
    return None


def _readable(value: object) -> str | None:
    text = " ".join(str(value).split()) if value is not None else ""  # headers pad with spaces
    return text if text and not is_uid(text) else None


def volume_name(metadata: VolumeMetadata, fallback: str | os.PathLike | None = None) -> VolumeName:
    """The name to show for a volume, from its metadata.

    ``full`` joins what is known of patient id, series description and date (the series date, else
    the study date) with " · ", e.g. ``"LIDC-IDRI-0001 · Chest CT · 2000-01-01"``. Without a patient
    id it starts with the file or folder name (``fallback``, else ``metadata.source_path``), folders
    named by a UID skipped; a UID is never shown. ``short`` is the patient id, else that file name,
    else the series description.

    Parameters
    ----------
    metadata
        What the reader kept (``read_volume(...).metadata``); DICOM adds ``series_description``,
        ``series_date`` and ``study_date`` to ``extra``.
    fallback
        A path or name to use when the metadata has no patient id (e.g. the file the user opened).

    Examples
    --------
    >>> meta = VolumeMetadata(patient_id="LIDC-IDRI-0001", extra={"series_description": "Chest CT",
    ...                                                          "study_date": "20000101"})
    >>> volume_name(meta).full
    'LIDC-IDRI-0001 · Chest CT · 2000-01-01'
    >>> volume_name(VolumeMetadata(series_uid="1.3.6.1.4.1.14519.5"), "scans/chest.nii.gz").full
    'chest'
    """
    extra = metadata.extra or {}
    patient = _readable(metadata.patient_id)
    description = _readable(extra.get("series_description"))
    date = dicom_date(extra.get("series_date")) or dicom_date(extra.get("study_date"))
    from_path = path_name(fallback) if fallback is not None else None
    from_path = from_path or path_name(metadata.source_path)
    first = patient or from_path
    parts = [p for p in (first, description, date) if p]
    if first is None and description is None:
        parts = []  # a date alone says nothing
    full = SEPARATOR.join(parts) or DEFAULT_NAME
    short = first or description or DEFAULT_NAME
    return VolumeName(full, short)


def derived_name(base: str, what: str) -> str:
    """The name of a layer derived from a volume: its short name and what it is.

    Examples
    --------
    >>> derived_name("LIDC-IDRI-0001", "NAM mask")
    'LIDC-IDRI-0001 · NAM mask'
    """
    base = base.strip() or DEFAULT_NAME
    return f"{base}{SEPARATOR}{what.strip()}" if what.strip() else base
