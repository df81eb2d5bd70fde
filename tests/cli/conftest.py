"""Fixtures for the command-line bad-input tests: a tiny phantom data set and an untrained NAM checkpoint."""

from __future__ import annotations

import pytest

from wsnodule_core.data.builders import build_dataset


@pytest.fixture(scope="package")
def tiny_dataset(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-bad") / "ds"
    build_dataset(folder, source="phantom", n_cases=3, size="tiny", n_shapes=20, seed=0)
    return folder


@pytest.fixture(scope="package")
def nam_checkpoint(tmp_path_factory):
    """An untrained narrow 1-GAP classifier at 64 px and 5 mm, saved by the training checkpoint writer."""
    from wsnodule_core.nam.model import MultiGapClassifier, MultiGapConfig
    from wsnodule_core.training.checkpoint import save_checkpoint

    config = MultiGapConfig(n_gap=1, width="narrow", head_channels=16)
    return save_checkpoint(tmp_path_factory.mktemp("runs") / "nam1.pt",
                           {"kind": "nam-multigap", "model_config": config.to_dict(),
                            "train_config": {"image_size": 64, "pixel_spacing_mm": 5.0},
                            "model_state": MultiGapClassifier(config).state_dict()})
