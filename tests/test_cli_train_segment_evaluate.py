"""`wsnodule train`, `segment` and `evaluate` end to end on a tiny phantom set, and their errors."""

from __future__ import annotations

import json

import numpy as np
import pytest

from wsnodule_core.cli.main import main
from wsnodule_core.data.builders import build_dataset
from wsnodule_core.data.dataset import load_dataset
from wsnodule_core.io import read_volume
from wsnodule_core.training.checkpoint import save_checkpoint

QUICK = ["--width", "narrow", "--image-size", "64", "--pixel-spacing", "5", "--epochs", "1",
         "--batch-size", "4", "--max-steps-per-epoch", "1", "--device", "cpu", "--quiet"]
TABLE_1 = ("tpr", "fpr", "fpr_nodule", "dice", "tp_dice", "tp_doa_mm2", "dice_3d", "msd_mm", "hd95_mm")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli") / "ds"
    build_dataset(folder, source="phantom", n_cases=3, size="tiny", n_shapes=20, seed=0)
    return folder


@pytest.fixture(scope="module")
def nam_run(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "nam1"
    assert main(["train", "--method", "nam", str(dataset), "--out", str(run), *QUICK]) == 0
    return run


@pytest.fixture(scope="module")
def two_gap_checkpoint(tmp_path_factory):
    """An untrained narrow 2-GAP classifier, saved by the training module's checkpoint writer."""
    from wsnodule_core.nam.model import MultiGapClassifier, MultiGapConfig
    from wsnodule_core.training.checkpoint import save_checkpoint

    config = MultiGapConfig(n_gap=2, width="narrow", head_channels=16)
    return save_checkpoint(tmp_path_factory.mktemp("runs") / "nam2.pt",
                           {"kind": "nam-multigap", "model_config": config.to_dict(),
                            "train_config": {"image_size": 64, "pixel_spacing_mm": 5.0},
                            "model_state": MultiGapClassifier(config).state_dict()})


@pytest.fixture(scope="module")
def unet_run(dataset, tmp_path_factory):
    run = tmp_path_factory.mktemp("runs") / "unet"
    assert main(["train", "--method", "unet", str(dataset), "--out", str(run), *QUICK]) == 0
    return run


def test_train_writes_checkpoints_and_refuses_an_existing_run(dataset, nam_run, capsys):
    from wsnodule_core.training.checkpoint import load_checkpoint

    checkpoint = load_checkpoint(nam_run / "last.pt")
    assert checkpoint.kind == "nam-multigap" and checkpoint.train_config["image_size"] == 64
    assert main(["train", str(dataset), "--out", str(nam_run), *QUICK]) == 1
    err = capsys.readouterr().err
    assert "--resume" in err and "--overwrite" in err


def test_train_errors(tmp_path, dataset, capsys):
    assert main(["train", str(tmp_path / "nothing"), "--out", str(tmp_path / "run")]) == 1
    assert "no such data set folder" in capsys.readouterr().err
    assert main(["train", str(dataset)]) == 1
    assert "--out RUN_DIR" in capsys.readouterr().err
    assert main(["train", "--method", "unet", "--n-gap", "2", str(dataset), "--out",
                 str(tmp_path / "u")]) == 1
    assert "NAM options" in capsys.readouterr().err


@pytest.mark.slow
def test_segment_writes_the_mask_and_maps_on_the_image_grid(dataset, nam_run, two_gap_checkpoint, tmp_path,
                                                            capsys):
    image_path = dataset / load_dataset(dataset).entries("test")[0]["image"]
    image = read_volume(image_path)
    output, maps = tmp_path / "mask.nrrd", tmp_path / "maps"
    argv = ["segment", str(image_path), "--checkpoint", str(nam_run / "best.pt"), "--output", str(output),
            "--maps", str(maps), "--multi-gap-checkpoint", str(two_gap_checkpoint), "--device", "cpu",
            "--quiet"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "device: cpu" in out and "wrote fine mask" in out
    mask = read_volume(output)
    assert mask.same_geometry(image)
    assert mask.array.min() >= 0
    fine = read_volume(maps / "fine.nii.gz")
    np.testing.assert_array_equal(fine.array, mask.array)  # --mode fine (default) writes the fine mask
    for name in ("nam", "multi_nam", "probability", "scope", "candidates", "coarse"):
        assert read_volume(maps / f"{name}.nii.gz").same_geometry(image), name
    scope = read_volume(maps / "scope.nii.gz").array
    assert set(np.unique(scope)) <= {0, 1, 2}
    scores = json.loads((maps / "rnam_scores.json").read_text())
    probability = read_volume(maps / "probability.nii.gz").array
    np.testing.assert_allclose(probability[:, 0, 0], scores["slice_probability"], rtol=1e-6)
    assert len(scores["slice_probability"]) == image.shape[0]
    n_labels = int(mask.array.max())
    assert f"{n_labels} nodule(s)" in out
    # never overwritten: refused before any work
    assert main(argv) == 1
    assert "already exists" in capsys.readouterr().err


@pytest.mark.slow
def test_segment_a_dicom_series_to_dicom_seg(dataset, nam_run, tmp_path, capsys):
    import pydicom

    from wsnodule_core.io.synthetic_dicom import write_synthetic_series

    case = load_dataset(dataset).load_case(load_dataset(dataset).entries("test")[0])
    folder = tmp_path / "series"
    write_synthetic_series(folder, np.rint(case.image.array), case.image.spacing, case.image.origin)
    output = tmp_path / "seg.dcm"
    assert main(["segment", str(folder), "--checkpoint", str(nam_run), "--output", str(output),
                 "--mode", "coarse", "--device", "cpu", "--quiet"]) == 0
    out = capsys.readouterr().out
    n_nodules = int(out.split(" nodule(s)")[0].rsplit(" ", 1)[-1])
    if n_nodules == 0:
        assert "was not written" in out and not output.exists()
    else:
        seg = pydicom.dcmread(output)
        assert seg.Modality == "SEG" and len(seg.SegmentSequence) == n_nodules
        series_uid = pydicom.dcmread(sorted(folder.iterdir())[0]).SeriesInstanceUID
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == series_uid


def test_segment_errors(dataset, nam_run, unet_run, tmp_path, capsys):
    image_path = dataset / load_dataset(dataset).entries("test")[0]["image"]
    base = ["segment", str(image_path), "--output", str(tmp_path / "m.nii.gz"), "--device", "cpu", "--quiet"]
    assert main([*base, "--checkpoint", str(tmp_path / "missing.pt")]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    assert main([*base, "--checkpoint", str(unet_run), "--passes", "2"]) == 1
    assert "takes no --passes" in capsys.readouterr().err
    assert main([*base, "--checkpoint", str(unet_run), "--mode", "coarse"]) == 1
    assert "takes no --mode" in capsys.readouterr().err
    assert main([*base, "--checkpoint", str(nam_run), "--passes", "2"]) == 1
    assert "takes no --passes" in capsys.readouterr().err
    other = tmp_path / "other.pt"
    save_checkpoint(other, {"kind": "other", "model_config": {}, "train_config": {}, "model_state": {}})
    assert main([*base, "--checkpoint", str(other)]) == 1
    assert "'other' model" in capsys.readouterr().err
    not_a_checkpoint = tmp_path / "x.pt"
    not_a_checkpoint.write_bytes(b"hello")
    assert main([*base, "--checkpoint", str(not_a_checkpoint)]) == 1
    assert "cannot read it as a wsnodule checkpoint" in capsys.readouterr().err
    assert main([*base[:3], str(tmp_path / "m.txt"), *base[4:], "--checkpoint", str(nam_run)]) == 1
    assert "cannot write this file type" in capsys.readouterr().err
    base[3] = str(tmp_path / "m.dcm")  # a DICOM-SEG needs a DICOM image
    assert main([*base, "--checkpoint", str(nam_run)]) == 1
    assert "not read from DICOM" in capsys.readouterr().err
    assert not list(tmp_path.glob("m.*"))  # the failures wrote nothing
    # every checkpoint kind segments through the same front door: the U-Net baseline too
    unet_mask = tmp_path / "unet.nii.gz"
    assert main([*base[:3], str(unet_mask), *base[4:], "--checkpoint", str(unet_run)]) == 0
    assert read_volume(unet_mask).same_geometry(read_volume(image_path))


@pytest.mark.slow
def test_evaluate_writes_table_figure_and_metrics(dataset, nam_run, unet_run, tmp_path, capsys):
    out = tmp_path / "eval"
    argv = ["evaluate", str(dataset), "--checkpoint", str(nam_run), "--checkpoint", f"U-net={unet_run}",
            "--out", str(out), "--device", "cpu", "--quiet"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    metrics = json.loads((out / "metrics.json").read_text())
    assert list(metrics["methods"]) == ["1-GAP Coarse", "1-GAP Fine", "U-net"]
    for row in metrics["methods"].values():
        for key in TABLE_1:
            assert key in row
        assert row["n_cases"] == 1
    report = (out / "report.md").read_text()
    assert "| 1-GAP Coarse |" in report and "| U-net |" in report and "| TPR |" in report
    assert (out / "fig3_size.png").stat().st_size > 5000
    assert "| 1-GAP Fine |" in printed
    assert main(argv) == 1  # an earlier report is not overwritten
    assert "--overwrite" in capsys.readouterr().err


def test_evaluate_errors(dataset, nam_run, tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "none"), "--checkpoint", str(nam_run), "--out",
                 str(tmp_path / "o")]) == 1
    assert "no such data set folder" in capsys.readouterr().err
    assert main(["evaluate", str(dataset), "--checkpoint", str(tmp_path / "no.pt"), "--out",
                 str(tmp_path / "o"), "--device", "cpu"]) == 1
    assert "no such checkpoint" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_checkpoint_names_parse():
    from pathlib import Path

    from wsnodule_core.cli.arguments import parse_checkpoint

    assert parse_checkpoint("2-GAP=runs/a/best.pt") == ("2-GAP", Path("runs/a/best.pt"))
    assert parse_checkpoint("runs/a") == (None, Path("runs/a"))


def test_train_the_flow_prior_then_resume_it_for_more_steps(dataset, tmp_path, capsys):
    from wsnodule_core.flow.train_prior import load_prior
    from wsnodule_core.training.checkpoint import load_checkpoint

    run = tmp_path / "prior"
    tiny = ["--steps", "2", "--steps-per-epoch", "1", "--patch-size", "16", "--batch-size", "1", "--device", "cpu",
            "--quiet"]
    assert main(["train", "--method", "flow-prior", str(dataset), "--out", str(run), *tiny]) == 0
    assert load_checkpoint(run / "last.pt").global_step == 2
    model, config = load_prior(run / "last.pt")
    assert config.patch == 16 and config.steps == 2
    assert main(["train", "--method", "flow-prior", str(dataset), "--out", str(run), "--resume", "--steps", "3",
                 "--quiet"]) == 0
    assert load_checkpoint(run / "last.pt").global_step == 3
    capsys.readouterr()
    assert main(["train", "--method", "flow-prior", str(dataset), "--out", str(tmp_path / "p2"), "--epochs", "3"]) != 0
    assert "--epochs: not options of --method flow-prior" in capsys.readouterr().err


def test_train_pw4medseg_from_simulated_points_then_evaluate_it(dataset, tmp_path, capsys):
    from wsnodule_core.training.checkpoint import load_checkpoint

    run = tmp_path / "pw"
    tiny = ["--annotation", "points:5", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "1",
            "--crop-size", "16", "--pixel-spacing", "6", "--device", "cpu", "--quiet", "--pw-norm", "batch",
            "--foreground-probability", "0.8", "--background-in-lungs", "0.25", "--nodule-free-confidence", "0.9",
            "--val-every", "2"]
    assert main(["train", "--method", "pw4medseg", str(dataset), "--out", str(run), *tiny]) == 0
    checkpoint = load_checkpoint(run / "last.pt")
    assert checkpoint.kind == "pw4medseg" and checkpoint.global_step == 2
    saved = checkpoint.train_config
    assert saved["annotation"]["n_points"] == 5 and saved["model"]["norm_name"] == "batch"
    assert tuple(saved["model"]["img_size"]) == (16, 16, 16)
    assert (saved["foreground_probability"], saved["background_in_lungs"]) == (0.8, 0.25)
    assert (saved["nodule_free_confidence"], saved["val_every"]) == (0.9, 2)
    capsys.readouterr()
    assert main(["evaluate", str(dataset), "--checkpoint", str(run), "--out", str(tmp_path / "eval"),
                 "--quiet"]) == 0
    assert "PW4MedSeg (points:5)" in (tmp_path / "eval" / "report.md").read_text()
    case = load_dataset(dataset).entries("test")[0]
    image = dataset / case["image"]
    out = tmp_path / "pw_mask.nii.gz"
    assert main(["segment", str(image), "--checkpoint", str(run), "--output", str(out), "--maps",
                 str(tmp_path / "pw_maps"), "--passes", "2", "--quiet"]) == 0
    ct, mask = read_volume(image), read_volume(out)
    assert mask.shape == ct.shape and mask.same_geometry(ct)
    uncertainty = read_volume(tmp_path / "pw_maps" / "uncertainty.nii.gz")
    assert uncertainty.same_geometry(ct) and float(uncertainty.array.max()) > 0.0  # two sampled passes differ
    assert main(["train", "--method", "pw4medseg", str(dataset), "--out", str(tmp_path / "pw2"), "--n-gap", "2"]) != 0
    assert "--n-gap: not options of --method pw4medseg" in capsys.readouterr().err
    assert main(["train", "--method", "nam", str(dataset), "--out", str(tmp_path / "nam"), "--val-every", "2"]) != 0
    assert "--val-every: not options of --method nam" in capsys.readouterr().err


def test_train_the_3d_nam_and_refuse_to_overwrite_its_run(dataset, tmp_path, capsys):
    run = tmp_path / "nam3d"
    quick = ["--patch-size", "16", "--pixel-spacing", "2", "--batch-size", "4", "--epochs", "1",
             "--max-steps-per-epoch", "2", "--nam3d-width", "narrow", "--device", "cpu", "--quiet"]
    assert main(["train", "--method", "nam3d", str(dataset), "--out", str(run), *quick]) == 0
    assert (run / "last.pt").exists() and (run / "best.pt").exists()
    from wsnodule_core.nam.model3d import KIND_3D
    from wsnodule_core.training.checkpoint import load_checkpoint

    saved = load_checkpoint(run / "last.pt")
    assert saved.kind == KIND_3D and saved.train_config["patch_size"] == 16
    assert saved.train_config["spacing_mm"] == 2.0
    before = (run / "last.pt").read_bytes()
    assert main(["train", "--method", "nam3d", str(dataset), "--out", str(run), *quick]) == 1
    assert "--resume" in capsys.readouterr().err
    assert (run / "last.pt").read_bytes() == before
    assert main(["train", "--method", "nam3d", str(dataset), "--out", str(tmp_path / "x"), "--width", "vgg16"]) == 1
    assert "--nam3d-width" in capsys.readouterr().err
    assert main(["train", "--method", "unet", str(dataset), "--out", str(tmp_path / "y"), "--nam3d-norm",
                 "batch"]) == 1
    assert "--nam3d-norm: not options of --method unet" in capsys.readouterr().err


def test_train_module_runs_under_python_dash_m():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "wsnodule_core.cli.main", "train", "--help"],
                          capture_output=True, text=True, check=True)
    assert "--method" in done.stdout and "nam3d" in done.stdout and "--splits" in done.stdout


def test_train_options_of_the_former_module_parsers(tmp_path):
    from wsnodule_core.cli.main import build_parser
    from wsnodule_core.cli.train import unet_config_from_args
    from wsnodule_core.cli.train_flow_prior import prior_config_from_args
    from wsnodule_core.cli.train_nam import config_from_args

    parse = build_parser().parse_args
    args = parse(["train", "DATA", str(tmp_path / "r"), "--method", "unet", "--epoch-size", "all"])
    assert unet_config_from_args(args).epoch_size == "all"
    assert config_from_args(parse(["train", "DATA", "OUT", "--epoch-size", "all"])).epoch_size == "all"
    args = parse(["train", "DATA", str(tmp_path / "p"), "--method", "flow-prior", "--flow-preset", "gpu",
                  "--splits", "train", "val", "--warmup-steps", "7"])
    config = prior_config_from_args(args)
    assert config.splits == ("train", "val") and config.warmup_steps == 7 and config.batch_size == 16
