"""Shared test set-up: the real-data folder from WSNODULE_DATA, made absolute once."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_DATA = os.environ.get("WSNODULE_DATA")
if _DATA:
    # CI sets a path relative to the repository root; later chdirs must not break it
    os.environ["WSNODULE_DATA"] = str(Path(_DATA).resolve())


@pytest.fixture
def one_torch_thread():
    """Tiny models run faster, and far steadier on a busy 2-core machine, on one torch thread
    (``pytestmark = pytest.mark.usefixtures("one_torch_thread")``); the count is restored after."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def wsnodule_data() -> Path:
    """The real-data folder, or a skip saying how to provide it."""
    value = os.environ.get("WSNODULE_DATA")
    if not value:
        pytest.skip("WSNODULE_DATA is not set: point it at the shared data folder to run real-data tests")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"WSNODULE_DATA={value} is not a folder")
    return path


@pytest.fixture
def chest_ct_series(wsnodule_data: Path) -> list[Path]:
    """The real chest CT DICOM series folders under $WSNODULE_DATA/chest-ct."""
    folders = sorted(p for p in (wsnodule_data / "chest-ct").glob("*") if p.is_dir())
    if not folders:
        pytest.skip(f"no DICOM series folders under {wsnodule_data / 'chest-ct'}")
    return folders
