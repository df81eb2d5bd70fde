"""Fixtures for the io tests: small synthetic DICOM series in tmp_path, and the real series when present."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import pytest
from highdicom.seg import segread

from wsnodule_core.io.synthetic_dicom import write_synthetic_series

REAL_SERIES = {
    # folder: (slices, rows, columns, pixel spacing mm, slice step mm) from the data README table
    "cptac-c3n-00247": (99, 512, 512, 0.564, 3.0),
    "tcga-34-2605": (61, 512, 512, 0.781, 5.0),
}


def _real_root() -> Path:
    root = os.environ.get("WSNODULE_DATA")
    if not root:
        pytest.skip("WSNODULE_DATA is not set: the real chest CT series are not available")
    folder = Path(root) / "chest-ct"
    if not folder.is_dir():
        pytest.skip(f"WSNODULE_DATA={root} has no chest-ct/ folder")
    return folder


@pytest.fixture(params=sorted(REAL_SERIES))
def real_series(request) -> tuple[Path, tuple]:
    """(folder, README geometry) of each real chest CT series; skips when WSNODULE_DATA is unset."""
    return _real_root() / request.param, REAL_SERIES[request.param]


@pytest.fixture
def real_series_small() -> Path:
    """The smaller real series (61 slices)."""
    return _real_root() / "tcga-34-2605"


def _ramp(shape: tuple[int, int, int] = (4, 6, 5), offset: int = -1000) -> np.ndarray:
    return (np.arange(np.prod(shape)).reshape(shape) * 7 + offset).astype(np.int16)


@pytest.fixture
def ramp() -> Callable[..., np.ndarray]:
    """Factory ``ramp(shape=(4, 6, 5), offset=-1000)``: distinct int16 HU per voxel, so any flip shows."""
    return _ramp


@pytest.fixture
def make_series(tmp_path: Path) -> Callable[..., Path]:
    """Factory: write a synthetic series (default 4x6x5 ramp, spacing 2.5/0.7/0.8) and return its folder."""

    def make(name: str = "series", array: np.ndarray | None = None, **kwargs) -> Path:
        folder = tmp_path / name
        kwargs.setdefault("spacing", (2.5, 0.7, 0.8))
        kwargs.setdefault("origin", (-10.0, 20.0, 30.0))
        write_synthetic_series(folder, _ramp() if array is None else array, **kwargs)
        return folder

    return make


def _check_seg_against_mask(seg_path, reference, mask) -> None:
    """Every stored frame references the CT slice whose position it has, and pixels equal the mask."""
    seg = segread(seg_path)
    values = [v for v in np.unique(mask) if v != 0]
    assert seg.get_segment_numbers() == list(range(1, len(values) + 1))
    sop_uids = reference.metadata.extra["sop_instance_uids"]
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in reference.metadata.dicom_files]
    assert [h.SOPInstanceUID for h in headers] == list(sop_uids)
    frames = seg.pixel_array.reshape(-1, *mask.shape[1:])
    for frame, group in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        source_uid = group.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        k = sop_uids.index(source_uid)
        position = [float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in headers[k].ImagePositionPatient], atol=1e-4)
        # highdicom puts the segment number in the shared groups when there is only one segment
        ident = group if "SegmentIdentificationSequence" in group else seg.SharedFunctionalGroupsSequence[0]
        segment = int(ident.SegmentIdentificationSequence[0].ReferencedSegmentNumber)
        np.testing.assert_array_equal(frame.astype(bool), mask[k] == values[segment - 1])
    # and through highdicom's own lookup by source instance (missing frames are empty)
    numbers = list(range(1, len(values) + 1))
    pixels = seg.get_pixels_by_source_instance(list(sop_uids), segment_numbers=numbers)
    for s, value in enumerate(values):
        np.testing.assert_array_equal(pixels[..., s].astype(bool), mask == value)
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == reference.metadata.series_uid
    assert seg.StudyInstanceUID == reference.metadata.study_uid


@pytest.fixture
def check_seg_against_mask() -> Callable[..., None]:
    """``check(seg_path, reference, mask)``: frames reference the right CT slices and equal the mask."""
    return _check_seg_against_mask
