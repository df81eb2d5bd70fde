"""The real LIDC-IDRI-0001 and 0002 scans ($WSNODULE_DATA/lidc-idri, Deflated DICOM) built into a data
set with images by the command line (``--dicom-root``, no pylidc configuration), loaded and evaluated;
the nodule centre of 0001 agrees with its LUNA16 annotation."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from wsnodule_core.cli.main import main
from wsnodule_core.data.dataset import load_dataset
from wsnodule_core.evaluation import evaluate_dataset
from wsnodule_core.segmentation import FunctionSegmenter

pytestmark = pytest.mark.slow
PATIENTS = ("LIDC-IDRI-0001", "LIDC-IDRI-0002")


def test_real_lidc_scans_build_load_and_evaluate(pylidc_module, lidc_home, wsnodule_data, tmp_path, capsys):
    root = wsnodule_data / "lidc-idri"
    if not all((root / p).is_dir() for p in PATIENTS):
        pytest.skip(f"{root} does not hold {PATIENTS}")
    out = tmp_path / "lidc"
    assert main(["data", "lidc", "--out", str(out), "--patients", *PATIENTS, "--with-images",
                 "--dicom-root", str(root)]) == 0
    dataset = load_dataset(out)
    cases = {e["subject"]: dataset.load_case(e) for e in dataset.entries()}
    assert set(cases) == set(PATIENTS)
    assert cases["LIDC-IDRI-0001"].image.shape == (133, 512, 512)
    assert cases["LIDC-IDRI-0002"].image.shape == (261, 512, 512)
    for case in cases.values():
        assert len(case.nodules) == int(np.asarray(case.mask.array).max()) >= 1
    # LUNA16 annotates the 0001 nodule (three or more readers): the same place, to well under a voxel
    luna = {r["seriesuid"]: r for r in csv.DictReader((wsnodule_data / "luna16" / "annotations.csv").open())}
    first = cases["LIDC-IDRI-0001"]
    row = luna[first.case_id]
    [nodule] = first.nodules
    distance = np.linalg.norm(np.subtract(nodule.centre_xyz, [float(row[k]) for k in ("coordX", "coordY", "coordZ")]))
    assert distance < 1.0

    masks = {c.image.shape: c.mask for c in cases.values()}
    truth = FunctionSegmenter("Truth", lambda volume, lungs: masks[volume.shape])
    report = evaluate_dataset(out, {"Truth": truth}, None, tmp_path / "eval", slices="all")
    assert report.rows["Truth"]["dice_3d"] == 1.0 and report.rows["Truth"]["detection_3d"]["tp"] == 2
