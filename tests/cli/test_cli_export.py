"""``wsnodule export``: the label map and CSV with the CT's geometry, edited flags from the model's mask,
outputs checked before anything is read, the input never overwritten."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.cli.main import main
from wsnodule_core.data.annotation_export import read_table
from wsnodule_core.io import Volume, read_volume, write_mask, write_volume

DIRECTION = np.array([[0.0, 1.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])


@pytest.fixture
def scan(tmp_path):
    ct = Volume(np.random.default_rng(0).normal(-800, 20, (10, 30, 32)).astype(np.int16), (2.0, 0.9, 0.8),
                (5.0, -12.0, 40.0), DIRECTION)
    model = np.zeros(ct.shape, np.uint8)
    model[2:5, 4:9, 4:9] = 1
    model[6:9, 18:24, 20:26] = 1
    edited = model.copy()
    edited[6:9, 18:24, 26] = 1  # the annotator widened the second nodule
    paths = {"ct": write_volume(ct, tmp_path / "ct.nii.gz"), "model": write_mask(model, ct, tmp_path / "model.nii.gz"),
             "edited": write_mask(edited, ct, tmp_path / "edited.nrrd")}
    return ct, edited, paths


def test_export_writes_label_map_and_table(tmp_path, scan, capsys):
    ct, edited, paths = scan
    out = tmp_path / "out" / "annotation.nii.gz"
    assert main(["export", str(paths["edited"]), "--ct", str(paths["ct"]), "--model-mask", str(paths["model"]),
                 "--method", "blob-refine", "--out", str(out)]) == 0
    written = read_volume(out)
    assert written.same_geometry(ct) and np.allclose(written.direction, DIRECTION, atol=1e-6)
    assert set(np.unique(written.array)) == {0, 1, 2} and np.array_equal(written.array > 0, edited > 0)
    rows = read_table(tmp_path / "out" / "annotation.csv")
    assert [(r["id"], r["source_method"], r["edited"]) for r in rows] == [("1", "blob-refine", "no"),
                                                                          ("2", "blob-refine", "yes")]
    centre = ct.index_to_world(np.argwhere(written.array == 2).mean(axis=0))
    np.testing.assert_allclose([float(rows[1][f"centre_{a}_mm"]) for a in "xyz"], centre, atol=0.006)
    printed = capsys.readouterr().out
    assert "2 nodule(s)" in printed and "annotation.csv" in printed
    # again: refused before anything is read, both files kept; --overwrite replaces them
    before = out.read_bytes()
    assert main(["export", str(paths["edited"]), "--out", str(out), "--edited", "yes"]) == 1
    assert "--overwrite" in capsys.readouterr().err and out.read_bytes() == before
    assert main(["export", str(paths["edited"]), "--out", str(out), "--edited", "yes", "--overwrite"]) == 0
    assert {r["edited"] for r in read_table(tmp_path / "out" / "annotation.csv")} == {"yes"}


def test_refusals(tmp_path, scan, capsys):
    _, edited, paths = scan
    # the mask itself, even with --overwrite
    assert main(["export", str(paths["edited"]), "--out", str(paths["edited"]), "--overwrite"]) == 1
    assert "never writes over its input" in capsys.readouterr().err
    # a mask off the CT's grid
    other = write_mask(edited[:, :, :-2], Volume(np.zeros(edited[:, :, :-2].shape)), tmp_path / "small.nii.gz")
    assert main(["export", str(other), "--ct", str(paths["ct"]), "--out", str(tmp_path / "x.nii.gz")]) == 1
    assert "not on its image's voxel grid" in capsys.readouterr().err and not (tmp_path / "x.nii.gz").exists()
    assert main(["export", str(paths["edited"]), "--edited", "no", "--model-mask", str(paths["model"]),
                 "--out", str(tmp_path / "y.nii.gz")]) == 1
    assert "not both" in capsys.readouterr().err
