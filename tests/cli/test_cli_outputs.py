"""Output locations are checked before any model is loaded: unwritable folders and the input itself."""

from __future__ import annotations

import os

import numpy as np
import pytest

from wsnodule_core.cli.main import main
from wsnodule_core.errors import OutputIsInputError, UnwritableOutputError
from wsnodule_core.io import Volume, write_volume
from wsnodule_core.io.synthetic_dicom import write_synthetic_series
from wsnodule_core.io.writers import check_not_input, check_writable_folder


@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot write into: chmod 0o500 for a user, /sys for root (chmod binds no root)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
        return
    if os.access("/sys", os.W_OK) and not _probe_fails("/sys"):
        pytest.skip("no folder here is unwritable for root")
    yield __import__("pathlib").Path("/sys")


def _probe_fails(folder) -> bool:
    import tempfile

    try:
        fd, name = tempfile.mkstemp(dir=folder)
    except OSError:
        return True
    os.close(fd)
    os.unlink(name)
    return False


@pytest.fixture
def ct_file(tmp_path):
    path = tmp_path / "ct.nii.gz"
    write_volume(Volume(np.full((3, 8, 8), -800, np.int16), (2.0, 1.0, 1.0)), path)
    return path


def _segment(image, output, *extra):
    # a checkpoint that does not exist: the output checks must come before it is even looked at
    return main(["segment", str(image), "--checkpoint", "/nowhere/none.pt", "--output", str(output),
                 "--device", "cpu", "--quiet", *extra])


def test_unwritable_output_folder_is_refused_first(ct_file, unwritable, capsys):
    assert _segment(ct_file, unwritable / "out" / "mask.nii.gz") == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and str(unwritable) in err and "no such checkpoint" not in err


def test_unwritable_maps_folder_is_refused_first(ct_file, tmp_path, unwritable, capsys):
    assert _segment(ct_file, tmp_path / "mask.nii.gz", "--maps", str(unwritable / "maps")) == 1
    err = capsys.readouterr().err
    assert "--maps" in err and "cannot write" in err and "no such checkpoint" not in err
    assert not (tmp_path / "mask.nii.gz").exists()


def test_output_under_a_file_is_refused(ct_file, tmp_path, capsys):
    assert _segment(ct_file, ct_file / "mask.nii.gz") == 1
    assert "not a folder" in capsys.readouterr().err


def test_output_that_is_the_input_is_refused_even_with_overwrite(ct_file, tmp_path, capsys):
    before = ct_file.read_bytes()
    assert _segment(ct_file, ct_file, "--overwrite") == 1
    assert "is the input" in capsys.readouterr().err
    link = tmp_path / "link.nii.gz"
    link.symlink_to(ct_file)
    assert _segment(ct_file, link, "--overwrite") == 1
    hard = tmp_path / "hard.nii.gz"
    os.link(ct_file, hard)
    assert _segment(ct_file, hard, "--overwrite") == 1
    assert _segment(ct_file, tmp_path / "x" / ".." / "ct.nii.gz", "--overwrite") == 1
    assert "is the input" in capsys.readouterr().err
    assert ct_file.read_bytes() == before


def test_maps_folder_holding_the_input_is_refused(tmp_path, capsys):
    ct = tmp_path / "nam.nii.gz"  # the name of a NAM map
    write_volume(Volume(np.zeros((3, 8, 8), np.int16)), ct)
    assert _segment(ct, tmp_path / "mask.nii.gz", "--maps", str(tmp_path), "--overwrite") == 1
    assert "is the input" in capsys.readouterr().err


def test_output_inside_the_input_dicom_series_is_refused(tmp_path, capsys):
    series = tmp_path / "series"
    files = write_synthetic_series(series, np.full((3, 8, 8), -800, np.int16), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    for image in (series, files[0]):
        assert _segment(image, series / "mask.nii.gz") == 1
        assert "inside the input DICOM series folder" in capsys.readouterr().err
        assert _segment(image, tmp_path / "m.nii.gz", "--maps", str(series / "maps")) == 1
        assert "inside the input DICOM series folder" in capsys.readouterr().err


def test_shared_checks_accept_ordinary_outputs(tmp_path, ct_file):
    assert check_writable_folder(tmp_path / "new" / "deeper", "--out") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # the check creates nothing
    check_not_input(tmp_path / "mask.nii.gz", [ct_file])
    with pytest.raises(OutputIsInputError):
        check_not_input(ct_file, [ct_file])


def test_evaluate_and_train_refuse_an_unwritable_out_first(tiny_dataset, unwritable, capsys):
    with pytest.raises(UnwritableOutputError):
        check_writable_folder(unwritable / "run", "--out")
    assert main(["evaluate", str(tiny_dataset), "--checkpoint", "/nowhere/none.pt", "--out",
                 str(unwritable / "eval"), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "cannot write" in err and "no such checkpoint" not in err
    for method in ("nam", "unet", "nam3d", "flow-prior", "flow-predictor", "pw4medseg"):
        assert main(["train", "--method", method, str(tiny_dataset), "--out", str(unwritable / "run"),
                     "--device", "cpu", "--quiet"]) == 1
        assert "cannot write" in capsys.readouterr().err, method
