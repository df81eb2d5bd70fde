"""`wsnodule train --method flow-predictor` on a tiny phantom set: checkpoints, resume, refused options."""

from __future__ import annotations

import re

import pytest

from wsnodule_core.cli.main import build_parser, main
from wsnodule_core.data.builders import build_dataset

pytestmark = pytest.mark.usefixtures("one_torch_thread")
QUICK = ["--architecture", "cnn3d", "--channels", "4", "8", "--norm", "batch", "--patch-size", "16",
         "--patch-spacing", "3", "--epochs", "2", "--batch-size", "4", "--max-steps-per-epoch", "2",
         "--device", "cpu", "--quiet"]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Three tiny phantom cases, one per split, each with at least one nodule (val has both classes)."""
    folder = tmp_path_factory.mktemp("cli-pred") / "ds"
    build_dataset(folder, source="phantom", n_cases=3, size="tiny", n_shapes=20, seed=0, split_ratio=(1, 1, 1),
                  nodules_per_case=(1, 3))
    return folder


def _train(dataset, run, *options: str) -> int:
    return main(["train", "--method", "flow-predictor", str(dataset), "--out", str(run), *options])


def test_train_cnn3d_then_resume_it(dataset, tmp_path, capsys):
    import torch

    from wsnodule_core.flow.predictors import KIND, load_predictor, trained_patch_config
    from wsnodule_core.training.checkpoint import load_checkpoint

    run = tmp_path / "pred"
    assert _train(dataset, run, *QUICK) == 0
    out = capsys.readouterr().out
    counts = re.search(r"patches of 16\^3 voxels at 3 mm: train (\d+) \((\d+) with nodule, (\d+) without\), "
                       r"val (\d+) \((\d+) with nodule, (\d+) without\)", out)
    assert counts, out
    n_train, pos, neg, n_val, val_pos, val_neg = map(int, counts.groups())
    assert n_train == pos + neg and pos > 0 and neg > 0 and n_val == val_pos + val_neg and val_pos and val_neg
    figures = re.search(r"best\.pt \(epoch (\d)\) on validation: accuracy ([\d.]+), sensitivity ([\d.]+), "
                        r"specificity ([\d.]+), AUC ([\d.]+)", out)
    assert figures, out
    for checkpoint_name in ("best.pt", "last.pt"):
        model, checkpoint = load_predictor(run / checkpoint_name)
        assert checkpoint.kind == KIND
        patches = trained_patch_config(checkpoint)
        assert (patches.size, patches.spacing_mm) == (16, 3.0)
        assert model(torch.rand(2, 1, 16, 16, 16)).shape == (2, 2)
    last = load_checkpoint(run / "last.pt")
    assert last.epoch == 2 and last.global_step == 4
    assert last.train_config["channels"] == [4, 8] and last.train_config["norm"] == "batch"
    assert last.raw["data"]["train"]["n"] == n_train and last.raw["data"]["val"]["n"] == n_val
    best = next(m for m in last.history if m["epoch"] == int(figures.group(1)))
    assert float(figures.group(2)) == pytest.approx(best["val_accuracy"], abs=5e-4)
    assert float(figures.group(5)) == pytest.approx(best["val_auc"], abs=5e-4)

    # --resume trains on with the run's own settings (the model options need not be given again)
    assert _train(dataset, run, "--resume", "--epochs", "3", "--quiet") == 0
    resumed = load_checkpoint(run / "last.pt")
    assert resumed.epoch == 3 and resumed.global_step == 6 and len(resumed.history) == 3
    assert resumed.train_config["channels"] == [4, 8] and resumed.train_config["epochs"] == 3
    capsys.readouterr()

    # a model or patch setting other than the run's own is refused, and the run is left as it was
    before = (run / "last.pt").read_bytes()
    for option in (["--architecture", "ortho25d"], ["--channels", "4", "16"], ["--patch-size", "32"],
                   ["--lr", "0.1"]):
        assert _train(dataset, run, "--resume", "--epochs", "4", "--quiet", *option) == 1
        err = capsys.readouterr().err
        assert f"was trained with {option[0]}" in err and "keeps its own settings" in err, err
    assert (run / "last.pt").read_bytes() == before
    # without --resume the run is refused before any patch is cut
    assert _train(dataset, run, *QUICK) == 1
    captured = capsys.readouterr()
    assert "--resume" in captured.err and "patches of" not in captured.out

    # --pretrained starts a new run from a local checkpoint's weights
    fine = tmp_path / "fine"
    assert _train(dataset, fine, *QUICK, "--epochs", "1", "--max-steps-per-epoch", "1", "--lr", "1e-9",
                  "--pretrained", str(run / "last.pt")) == 0
    assert load_checkpoint(fine / "last.pt").train_config["pretrained_path"] == str(run / "last.pt")
    started, _ = load_predictor(run / "last.pt")
    tuned, _ = load_predictor(fine / "last.pt")
    weight = "net.features.0.weight"
    assert torch.allclose(started.state_dict()[weight], tuned.state_dict()[weight], atol=1e-6)


def test_options_of_other_methods_are_refused_with_one_line_and_nothing_written(dataset, tmp_path, capsys):
    run = tmp_path / "refused"
    cases = ((["--n-gap", "2"], "--n-gap: not options of --method flow-predictor"),
             (["--n-gap", "2", "--steps", "5"], "--n-gap, --steps: not options of --method flow-predictor"),
             (["--pixel-spacing", "2"], "(the patch spacing is --patch-spacing)"),
             (["--deterministic"], "--deterministic: not options of --method flow-predictor"),
             (["--slab", "3"], "--slab: not options of --architecture cnn3d"),
             (["--fine-tune-encoder"], "--fine-tune-encoder: not options of --architecture cnn3d"),
             (["--architecture", "tinyvit25d", "--fine-tune-encoder", "--embedding-cache", str(tmp_path)],
              "caches no embeddings"),
             (["--pretrained", str(tmp_path / "none.pt")], "no such weights file"))
    for options, message in cases:
        assert _train(dataset, run, *options) == 1
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
        assert not run.exists()
    # and the predictor's own options are refused by the other methods
    assert main(["train", "--method", "nam", str(dataset), "--out", str(run), "--architecture", "cnn3d",
                 "--patch-spacing", "2"]) == 1
    assert "--architecture, --patch-spacing: not options of --method nam" in capsys.readouterr().err
    assert not run.exists()


def test_tinyvit25d_options_build_a_frozen_encoder_head_on_cached_embeddings(tmp_path):
    from wsnodule_core.cli.train_flow_predictor import predictor_config_from_args

    parse = build_parser().parse_args
    base = ["train", "--method", "flow-predictor", "DATA", "--out", str(tmp_path / "r"), "--architecture",
            "tinyvit25d", "--slab", "3", "--channels", "32"]
    config, patches = predictor_config_from_args(parse([*base, "--embedding-cache", str(tmp_path / "cache"),
                                                        "--dropout", "0.2", "--lr", "3e-4"]))
    assert config.architecture == "tinyvit25d" and config.slab == 3 and config.channels == (32,)
    assert config.uses_cached_embeddings and config.embedding_cache == str(tmp_path / "cache")
    assert (config.dropout, config.lr, config.fine_tune_encoder) == (0.2, 3e-4, False)
    assert (patches.size, patches.spacing_mm) == (32, 1.5)  # the real benchmark's patches
    model = config.model_config()
    assert model.architecture == "tinyvit25d" and model.slab == 3 and not model.fine_tune_encoder
    config, _ = predictor_config_from_args(parse([*base, "--fine-tune-encoder", "--no-augment"]))
    assert config.fine_tune_encoder and not config.uses_cached_embeddings and not config.augment


def test_the_spelt_out_choices_are_the_predictors_own():
    from wsnodule_core.cli import train_flow_predictor as cli
    from wsnodule_core.flow import predictors
    from wsnodule_core.flow.patches import PatchConfig

    assert cli.ARCHITECTURES == predictors.ARCHITECTURES and cli.NORMS == predictors.NORMS
    assert (cli.PATCH_SIZE, cli.PATCH_SPACING_MM) == (PatchConfig().size, PatchConfig().spacing_mm)
