"""The shipped models' table: lookups, its checks, the files' size and SHA-256, and the errors."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from wsnodule_core.errors import ShippedModelError, UnknownShippedModelError, WsnoduleError
from wsnodule_core.shipped import (
    SHIPPED,
    Companion,
    Registry,
    ShippedModel,
    default_method,
    shipped_checkpoint,
    shipped_model,
    shipped_models,
)
from wsnodule_core.shipped.registry import MAX_FILE_BYTES, MODELS, TRAINED, TRAINING_FREE

ROOT = Path(__file__).resolve().parents[2]
MODELS_DIR = ROOT / "src" / "wsnodule_core" / "shipped" / "models"


def trained_entry(file: str = "nam.pt", sha256: str = "0" * 64, **changes) -> ShippedModel:
    fields = {"name": "tiny-nam", "method": "nam", "file": file, "card": "docs/models/nam.md",
              "summary": "a test NAM", "sha256": sha256, "rebuild": "wsnodule train --method nam DATA --out RUN"}
    return ShippedModel(**{**fields, **changes})


def test_the_table_its_default_and_lookups():
    names = [m.name for m in shipped_models()]
    assert len(names) == len(set(names)) and {"blob-refine", "medsam-box"} <= set(names)
    assert default_method() == "blob-refine" == SHIPPED.default
    assert shipped_model("medsam-box").method == "medsam-box" and not shipped_model("medsam-box").trained
    for model in shipped_models():
        assert model.card == f"docs/models/{model.name}.md" and model.summary
        assert (model.method in TRAINING_FREE) == (model.file is None)


def test_an_unknown_name_lists_the_known_ones():
    with pytest.raises(UnknownShippedModelError, match="no shipped model 'namm'.*blob-refine.*medsam-box") as info:
        shipped_model("namm")
    assert isinstance(info.value, WsnoduleError) and isinstance(info.value, LookupError)
    with pytest.raises(ShippedModelError, match="training-free"):
        shipped_checkpoint("medsam-box")


def test_entries_are_checked_when_made():
    with pytest.raises(ShippedModelError, match="not one of"):
        trained_entry(method="segformer")
    with pytest.raises(ShippedModelError, match="needs its file, SHA-256"):
        trained_entry(sha256=None)
    with pytest.raises(ShippedModelError, match="takes no file"):
        ShippedModel("box", "medsam-box", "box.pt", "docs/models/box.md", "x", sha256="0" * 64)
    with pytest.raises(ShippedModelError, match="argument"):
        Companion("prior", "p.pt", "0" * 64)
    with pytest.raises(ShippedModelError, match="not in the table"):
        Registry(MODELS, default="tiny-nam")
    with pytest.raises(ShippedModelError, match="repeat"):
        Registry(MODELS + MODELS[:1])


def test_trained_methods_are_the_kinds_that_segment():
    from wsnodule_core.segmentation.load import method_kinds

    assert set(TRAINED) == set(method_kinds()) - {"flow_prior"}


def test_every_shipped_file_is_listed_small_and_intact():
    """Each file under shipped/models is a table entry's, at most 20 MB, with the SHA-256 the table says."""
    listed = {file: sha for model in MODELS for file, sha in model.files}
    present = {p.name for p in MODELS_DIR.iterdir() if p.suffix == ".pt"}
    assert present == set(listed), f"files without an entry or entries without a file: {present ^ set(listed)}"
    for name in present:
        path = MODELS_DIR / name
        assert path.stat().st_size <= MAX_FILE_BYTES, f"{name}: {path.stat().st_size} bytes > 20 MB"
        assert hashlib.sha256(path.read_bytes()).hexdigest() == listed[name]
    for model in MODELS:
        if model.trained:
            assert shipped_checkpoint(model.name) == MODELS_DIR / model.file
            assert SHIPPED.file_path(model.file).resolve() == (MODELS_DIR / model.file).resolve()


def test_the_package_data_takes_the_model_files():
    lines = (ROOT / "pyproject.toml").read_text().split("[tool.setuptools.package-data]")[1].split("\n[")[0]
    assert 'wsnodule_core = ["shipped/models/*.pt"]' in lines


def test_a_missing_or_altered_file_is_refused_saying_what_to_do(tmp_path):
    data = b"a checkpoint"
    entry = trained_entry(sha256=hashlib.sha256(data).hexdigest())
    registry = Registry(MODELS + (entry,), folder=tmp_path)
    with pytest.raises(ShippedModelError, match="install is incomplete") as info:
        shipped_checkpoint("tiny-nam", registry)
    assert entry.rebuild in str(info.value) and entry.card in str(info.value)
    assert registry.size_bytes("tiny-nam") is None
    (tmp_path / "nam.pt").write_bytes(data)
    assert shipped_checkpoint("tiny-nam", registry) == tmp_path / "nam.pt"
    assert registry.size_bytes("tiny-nam") == len(data)
    (tmp_path / "nam.pt").write_bytes(b"A checkpoint")
    with pytest.raises(ShippedModelError, match="SHA-256 .* is not the shipped model 'tiny-nam'") as info:
        shipped_checkpoint("tiny-nam", registry)
    assert entry.rebuild in str(info.value)
    # a companion is checked as well
    prior = Companion("prior_checkpoint", "prior.pt", hashlib.sha256(b"prior").hexdigest())
    flow = trained_entry(name="tiny-flow", method="flow_predictor", file="nam.pt",
                         sha256=hashlib.sha256(b"A checkpoint").hexdigest(), companions=(prior,))
    with pytest.raises(ShippedModelError, match="prior.pt.*missing"):
        shipped_checkpoint("tiny-flow", Registry(MODELS + (flow,), folder=tmp_path))


def test_wsnodule_models_lists_the_table(tmp_path, capsys):
    from wsnodule_core.cli.main import main
    from wsnodule_core.cli.models import run

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "blob-refine *" in out and "docs/models/medsam-box.md" in out
    (tmp_path / "nam.pt").write_bytes(b"x" * 2_000_000)
    registry = Registry(MODELS + (trained_entry(sha256=hashlib.sha256(b"x" * 2_000_000).hexdigest()),),
                        folder=tmp_path)
    assert run(None, registry) == 0
    line = next(row for row in capsys.readouterr().out.splitlines() if row.startswith("tiny-nam "))
    assert line.split()[:4] == ["tiny-nam", "nam", "2.0", "MB"]
    assert run(None, Registry(MODELS + (trained_entry(),), folder=tmp_path / "none")) == 0
    assert "missing" in capsys.readouterr().out


def test_the_package_exports_what_it_lists():
    from wsnodule_core import shipped

    assert sorted(shipped.__all__) == sorted(shipped._EXPORTS)
    for name in shipped.__all__:
        assert getattr(shipped, name) is not None
