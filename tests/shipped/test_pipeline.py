"""The blob-classify-refine pipeline as a shipped model: a tiny flow predictor trained here on synthetic
sphere patches is the file of a test registry's entry (the package's table untouched); it loads with the
entry's threshold (a call's replaces it, a checkpoint's recorded one is the fallback), a file of another
kind is refused, and `wsnodule segment --method blob-classify-refine` segments a synthetic chest."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from wsnodule_core.errors import ModelConfigError, ShippedModelError
from wsnodule_core.flow.patches import PatchConfig, PatchSet
from wsnodule_core.segmentation import ClassifiedSegmenter, RefinedSegmenter
from wsnodule_core.segmentation.classified import (
    DEFAULT_THRESHOLD,
    PROBABILITY_MAP,
    load_blob_classify_refine,
)
from wsnodule_core.shipped import SHIPPED, Registry, ShippedModel, load_shipped
from wsnodule_core.shipped.registry import MODELS, PIPELINES
from wsnodule_core.training.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_torch_thread")
NAME = "blob-classify-refine"
OTHERS = tuple(m for m in MODELS if m.name != NAME)  # the test puts its own tiny one in its place


def sphere_patches(n: int, size: int = 16, seed: int = 0) -> PatchSet:
    """``n`` noisy lung-level cubes, every second one with a bright sphere at the centre (label 1)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices((size,) * 3)
    images = (0.08 + 0.01 * rng.standard_normal((n, size, size, size))).clip(0, 1)
    labels = (np.arange(n) % 2).astype(np.int8)
    masks = np.zeros((n, size, size, size), np.uint16)
    for i in np.flatnonzero(labels):
        c = rng.integers(size // 2 - 1, size // 2 + 2, 3)
        ball = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= rng.uniform(2.5, 4.0) ** 2
        images[i][ball] = 0.5
        masks[i][ball] = 1
    return PatchSet(images.astype(np.float16), labels, masks, np.ones((n, size, size, size), bool),
                    labels.astype(np.int32), np.array([f"c{i}" for i in range(n)], dtype=object),
                    np.zeros((n, 3)), np.tile(np.eye(3), (n, 1, 1)), np.zeros((n, 3)), PatchConfig(size=size))


@pytest.fixture(scope="module")
def shipped(tmp_path_factory):
    """A tiny 3D CNN predictor trained on sphere patches, shipped by a test table with threshold 0.4."""
    from wsnodule_core.flow.predictors import PredictorTrainConfig, train_predictor

    folder = tmp_path_factory.mktemp("shipped")
    config = PredictorTrainConfig("cnn3d", channels=(8, 16), batch_size=8, lr=3e-3, epochs=4, device="cpu",
                                  amp=False)
    run = train_predictor((sphere_patches(64, seed=1), sphere_patches(16, seed=2)), folder / "run", config)
    assert run.history[-1]["val_accuracy"] >= 0.9
    path = folder / "predictor.pt"
    path.write_bytes((folder / "run" / "best.pt").read_bytes())
    entry = ShippedModel(NAME, NAME, "predictor.pt", f"docs/models/{NAME}.md", "a tiny test pipeline",
                         sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
                         rebuild="wsnodule train --method flow-predictor DATA --out RUN",
                         options=(("threshold", 0.4),))
    return Registry(OTHERS + (entry,), folder=folder), path


def test_the_entry_loads_the_pipeline_with_its_threshold(shipped):
    registry, _ = shipped
    medsam = object()  # not called until segmenting: the structure is checked without LiteMedSAM
    segmenter = load_shipped(NAME, "cpu", registry=registry, lite_medsam=medsam, margin_mm=1.0)
    assert isinstance(segmenter, RefinedSegmenter) and segmenter.model is medsam
    assert dict(segmenter.options) == {"margin_mm": 1.0}
    classified = segmenter.inner
    assert isinstance(classified, ClassifiedSegmenter) and classified.threshold == 0.4  # the entry's
    assert classified.patch_config.size == 16 and classified.patch_config.spacing_mm == 1.5  # trained protocol
    assert load_shipped(NAME, "cpu", registry=registry, lite_medsam=medsam, threshold=0.8).inner.threshold == 0.8
    assert SHIPPED.get(NAME).sha256 != registry.get(NAME).sha256  # the package's own entry is untouched
    assert registry.get(NAME).file_method == "flow_predictor" == PIPELINES[NAME]


def test_the_trained_predictor_keeps_the_nodule_of_a_chest(shipped, synthetic_chest):
    _, path = shipped
    ct, nodule = synthetic_chest
    classified = load_blob_classify_refine(path, "cpu", refine=False, threshold=0.5)
    lungs = np.asarray(ct.array) < -500
    result = classified.segment(ct, lungs=lungs)
    assert result.mask.same_geometry(ct) and result.maps[PROBABILITY_MAP].same_geometry(ct)
    assert np.asarray(result.mask.array)[nodule].any()
    found = [c for c in result.details.candidates if nodule[tuple(np.round(ct.world_to_index(c.centre_xyz))
                                                                  .astype(int))]]
    assert len(found) == 1 and found[0].kept and found[0].new_label == 1
    # parenchyma far from the nodule scores low with the same predictor and patch protocol
    quiet = ct.index_to_world(np.array([[6.0, 64.0, 90.0]]))
    assert classified.score(ct, quiet)[0] < 0.5 < found[0].probability


def test_the_threshold_falls_back_on_the_checkpoints_then_the_default(shipped, tmp_path):
    _, path = shipped
    assert load_blob_classify_refine(path, "cpu", refine=False).threshold == DEFAULT_THRESHOLD
    recorded = tmp_path / "recorded.pt"
    save_checkpoint(recorded, {**load_checkpoint(path).raw, "threshold": 0.9})
    assert load_blob_classify_refine(recorded, "cpu", refine=False).threshold == 0.9
    assert load_blob_classify_refine(recorded, "cpu", refine=False, threshold=0.2).threshold == 0.2
    with pytest.raises(ModelConfigError, match="no option"):
        load_blob_classify_refine(path, "cpu", refine=False, margin_mm=2.0)


def test_a_file_of_another_kind_or_no_file_is_refused(shipped, tmp_path):
    registry, _ = shipped
    save_checkpoint(registry.folder / "unet.pt", {"kind": "unet-baseline", "model_config": {},
                                                  "train_config": {}, "model_state": {}})
    sha = hashlib.sha256((registry.folder / "unet.pt").read_bytes()).hexdigest()
    wrong = Registry(OTHERS + (ShippedModel(NAME, NAME, "unet.pt", f"docs/models/{NAME}.md", "x", sha256=sha,
                                            rebuild="r"),), folder=registry.folder)
    with pytest.raises(ShippedModelError, match=f"holds a 'unet-baseline' model, but --method {NAME} segments "
                                                "with 'flow-predictor'"):
        load_shipped(NAME, "cpu", registry=wrong, lite_medsam=object())
    with pytest.raises(ShippedModelError, match="needs its file, SHA-256"):
        ShippedModel(NAME, NAME, None, f"docs/models/{NAME}.md", "x")
    with pytest.raises(ShippedModelError, match="training-free and takes no checkpoint"):
        load_shipped("blob-refine", "cpu", registry=registry, lite_medsam=object(),
                     checkpoint=registry.folder / "predictor.pt")


@pytest.mark.slow
def test_segment_with_the_pipeline_from_the_table_and_from_a_checkpoint(shipped, lite_medsam, tmp_path,
                                                                         monkeypatch, capsys, synthetic_chest):
    from wsnodule_core.cli.main import build_parser
    from wsnodule_core.cli.segment import run
    from wsnodule_core.io import read_volume, write_volume

    monkeypatch.setenv("WSNODULE_CACHE", str(tmp_path / "cache"))
    registry, path = shipped
    ct, nodule = synthetic_chest
    ct_path = write_volume(ct, tmp_path / "ct.nii.gz")

    def segment(out, *extra: str) -> np.ndarray:
        args = build_parser().parse_args(["segment", str(ct_path), "--output", str(out), "--device", "cpu",
                                          "--quiet", "--method", NAME, *extra])
        assert run(args, registry=registry, lite_medsam=lite_medsam) == 0
        return np.asarray(read_volume(out).array) > 0

    mask = segment(tmp_path / "mask.nii.gz", "--maps", str(tmp_path / "maps"))
    printed = capsys.readouterr().out
    assert f"model: {NAME} (shipped; a tiny test pipeline" in printed
    dice = 2 * np.count_nonzero(mask & nodule) / (mask.sum() + nodule.sum())
    assert dice > 0.5, dice
    chances = read_volume(tmp_path / "maps" / f"{PROBABILITY_MAP}.nii.gz")
    assert chances.same_geometry(ct) and float(np.asarray(chances.array)[nodule].max()) >= 0.4
    again = segment(tmp_path / "again.nii.gz", "--checkpoint", str(path))
    assert f"checked as --method {NAME}" in capsys.readouterr().out
    assert np.array_equal(again, mask)  # the same file, threshold and LiteMedSAM: the same mask
