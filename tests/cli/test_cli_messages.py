"""What the command line says on bad input: CLI flags (not Python arguments), one-line warnings,
no PyTorch hint to unpickle, the image size and resume checks of `wsnodule train`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wsnodule_core.cli.main import main
from wsnodule_core.errors import CheckpointError, OutputExistsError, SpacingWarning, UnsuitableVolumeError
from wsnodule_core.io import Volume, write_mask, write_volume
from wsnodule_core.io.synthetic_dicom import write_synthetic_series

QUICK = ["--width", "narrow", "--pixel-spacing", "5", "--epochs", "1", "--batch-size", "4",
         "--max-steps-per-epoch", "1", "--device", "cpu", "--quiet"]


def _segment(image, output, checkpoint="/nowhere/none.pt", *extra):
    return main(["segment", str(image), "--checkpoint", str(checkpoint), "--output", str(output),
                 "--device", "cpu", "--quiet", *extra])


@pytest.fixture
def two_series(tmp_path):
    folder = tmp_path / "two"
    folder.mkdir()
    array = np.full((3, 8, 8), -800, np.int16)
    for uid in ("1.2.3.1", "1.2.3.2"):
        files = write_synthetic_series(tmp_path / uid, array, (2.0, 1.0, 1.0), (0.0, 0.0, 0.0), series_uid=uid,
                                       sop_instance_uids=[f"{uid}.{i}" for i in range(3)])
        for path in files:
            path.rename(folder / f"{uid}-{path.name}")
    return folder


def test_mixed_series_points_to_the_series_uid_option(two_series, nam_checkpoint, tmp_path, capsys):
    assert _segment(two_series, tmp_path / "m.nii.gz", nam_checkpoint) == 1
    err = capsys.readouterr().err
    assert "--series-uid" in err and "series_uid=" not in err and "1.2.3.2" in err
    _segment(two_series, tmp_path / "m.nii.gz", nam_checkpoint, "--series-uid", "1.2.3.2")
    err = capsys.readouterr().err
    assert "DICOM series" not in err  # the series was chosen; anything after is not about it
    assert _segment(two_series, tmp_path / "m.nii.gz", nam_checkpoint, "--series-uid", "9.9") == 1
    assert "no DICOM series with SeriesInstanceUID 9.9" in capsys.readouterr().err


def test_existing_output_names_the_overwrite_flag_on_the_cli(tmp_path, capsys):
    ct = tmp_path / "ct.nii.gz"
    volume = Volume(np.zeros((3, 8, 8), np.int16))
    write_volume(volume, ct)
    taken = tmp_path / "mask.nii.gz"
    write_mask(np.zeros((3, 8, 8), np.uint8), volume, taken)
    assert _segment(ct, taken) == 1
    err = capsys.readouterr().err
    assert "--overwrite" in err and "overwrite=True" not in err
    with pytest.raises(OutputExistsError, match="overwrite=True"):  # the Python API keeps its argument
        write_mask(np.zeros((3, 8, 8), np.uint8), volume, taken)


def test_checkpoint_errors_never_suggest_weights_only_false(tmp_path, capsys):
    from wsnodule_core.training.checkpoint import load_checkpoint

    pickled = tmp_path / "pickled.pt"
    torch.save({"format": "wsnodule-checkpoint", "payload": Path("x")}, pickled)  # a Python object
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(pickled)
    message = str(info.value)
    assert "weights_only" not in message and "pickled.pt" in message and "Python objects" in message
    ct = tmp_path / "ct.nii.gz"
    write_volume(Volume(np.zeros((3, 8, 8), np.int16)), ct)
    assert _segment(ct, tmp_path / "m.nii.gz", pickled) == 1
    err = capsys.readouterr().err
    assert "weights_only" not in err and "pickled.pt" in err


def test_mr_warning_is_one_clean_line(tmp_path, nam_checkpoint, capsys):
    folder = tmp_path / "mr"
    write_synthetic_series(folder, np.full((3, 8, 8), 100, np.int16), (2.0, 1.0, 1.0), (0.0, 0.0, 0.0),
                           modality="MR")
    _segment(folder, tmp_path / "m.nii.gz", nam_checkpoint)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "not CT" in line]
    assert len(lines) == 1 and lines[0].startswith("wsnodule segment: warning: ")
    assert ".py:" not in err and "NonCTModalityWarning" not in err and "warnings.warn" not in err


def test_thick_slices_warn_naming_the_training_spacing(tmp_path, nam_checkpoint, capsys):
    ct = tmp_path / "thick.nii.gz"
    write_volume(Volume(np.full((3, 16, 16), -800, np.int16), (10.0, 0.5, 0.5)), ct)
    _segment(ct, tmp_path / "m.nii.gz", nam_checkpoint)
    err = capsys.readouterr().err
    warning = [line for line in err.splitlines() if "warning" in line and "10" in line]
    assert warning and "5 mm" in warning[0]  # the model's training spacing (the fixture's 5 mm)


def test_single_slice_is_refused(tmp_path, nam_checkpoint, capsys):
    ct = tmp_path / "one.nii.gz"
    write_volume(Volume(np.full((1, 16, 16), -800, np.int16), (1.0, 0.7, 0.7)), ct)
    assert _segment(ct, tmp_path / "m.nii.gz", nam_checkpoint) == 1
    assert "single" in capsys.readouterr().err
    assert not (tmp_path / "m.nii.gz").exists()


def test_spacing_check_in_the_library():
    from wsnodule_core.segmentation.spacing import check_segmentation_spacing

    with pytest.warns(SpacingWarning, match="10 mm"):
        check_segmentation_spacing(Volume(np.zeros((3, 4, 4)), (10.0, 0.5, 0.5)), 0.7)
    with pytest.raises(UnsuitableVolumeError, match="single"):
        check_segmentation_spacing(Volume(np.zeros((1, 4, 4)), (1.0, 0.5, 0.5)), 0.7)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_segmentation_spacing(Volume(np.zeros((30, 4, 4)), (1.25, 0.7, 0.7)), 0.7)  # ordinary CT


def test_train_image_size_too_small_says_so(tiny_dataset, tmp_path, capsys):
    assert main(["train", str(tiny_dataset), "--out", str(tmp_path / "r"), "--image-size", "7", *QUICK]) == 1
    err = capsys.readouterr().err
    assert "image size" in err.replace("_", " ") and "too small" in err
    assert "class-balanced" not in err and "data set" not in err


def test_resume_refuses_another_image_size(tiny_dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(tiny_dataset), "--out", str(run), "--image-size", "64", *QUICK]) == 0
    capsys.readouterr()
    before = (run / "last.pt").read_bytes()
    assert main(["train", str(tiny_dataset), "--out", str(run), "--resume", "--image-size", "96", *QUICK]) == 1
    err = capsys.readouterr().err
    assert "--image-size" in err and "64" in err and "96" in err
    assert (run / "last.pt").read_bytes() == before
