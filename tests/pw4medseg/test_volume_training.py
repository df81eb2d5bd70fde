"""Training PW4MedSeg on one CT and its pseudo-label (pw4medseg/volume_training.py): the target as given,
the model loaded back, progress, cancel keeping last.pt, and the validation-chosen threshold."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from wsnodule_core.errors import OutputExistsError
from wsnodule_core.io.volume import Volume
from wsnodule_core.pw4medseg.model import PTransformerConfig
from wsnodule_core.pw4medseg.pseudo_labels import PseudoLabel
from wsnodule_core.pw4medseg.config import PwTrainConfig, checkpoint_config
from wsnodule_core.pw4medseg.volume_training import train_on_volume, training_case
from wsnodule_core.training.callbacks import TrainCallbacks

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = PTransformerConfig.compact(img_size=(16, 16, 16), hidden_size=16, num_layers=1, num_heads=2,
                                  mlp_dim=32, feature_size=4)


def _case() -> tuple[Volume, PseudoLabel]:
    rng = np.random.default_rng(0)
    hu = (-850 + rng.normal(0, 20, (12, 40, 40))).astype(np.float32)
    hu[5:8, 18:23, 18:23] = 20
    volume = Volume(hu, (2.5, 0.8, 0.7), (10.0, -20.0, 30.0), np.diag([-1.0, 1.0, -1.0]))
    probability = np.zeros(volume.shape, np.float32)
    probability[5:8, 18:23, 18:23] = 0.9
    confidence = np.full(volume.shape, 0.5, np.float32)
    return volume, PseudoLabel(probability, confidence, volume)


def _config(**overrides) -> PwTrainConfig:
    values = dict(model=TINY, batch_size=1, warmup_steps=0, epochs=1, steps_per_epoch=2, device="cpu",
                  spacing_mm=(2.5, 2.0, 2.0))
    return PwTrainConfig(**{**values, **overrides})


def test_the_case_is_the_pseudo_label_as_given():
    volume, label = _case()
    lungs = np.ones(volume.shape, np.uint8)
    case = training_case(volume, label, lungs, "ct")
    assert case.case_id == "ct" and case.image is volume
    np.testing.assert_array_equal(case.probability, label.probability)
    np.testing.assert_array_equal(case.confidence, label.confidence)
    assert case.lungs.dtype == bool and case.lungs.all()
    assert training_case(volume, label).lungs is None


def test_training_loads_the_model_back_and_cancel_keeps_last(tmp_path):
    volume, label = _case()
    losses: list[float] = []
    ticks: list[tuple[int, int]] = []
    trained = train_on_volume(volume, label, tmp_path / "run", _config(), name="ct",
                              callbacks=TrainCallbacks(step_fn=lambda step, total, loss: losses.append(loss)),
                              progress=lambda done, total: ticks.append((done, total)))
    assert not trained.cancelled and trained.run.global_step == 2 and len(losses) == 2
    assert ticks == [(1, 1)]
    assert (tmp_path / "run" / "last.pt").is_file()
    assert trained.checkpoint.kind == "pw4medseg" and trained.checkpoint.path.parent == tmp_path / "run"
    assert not trained.model.training and trained.config.model == TINY and str(trained.device.device) == "cpu"
    with pytest.raises(OutputExistsError):
        train_on_volume(volume, label, tmp_path / "run", _config())

    steps: list[int] = []
    stopped = train_on_volume(volume, label, tmp_path / "cancelled", _config(epochs=3),
                              callbacks=TrainCallbacks(step_fn=lambda step, total, loss: steps.append(step)),
                              cancel=lambda: len(steps) >= 1)
    assert stopped.cancelled and stopped.model is None and stopped.checkpoint is None
    assert stopped.run.global_step == 1 and (tmp_path / "cancelled" / "last.pt").is_file()


def test_inference_uses_the_threshold_the_run_chose_on_validation():
    saved = PwTrainConfig(device="cpu").to_dict()
    tuned = SimpleNamespace(train_config=saved, raw={"probability_threshold": 0.8})
    untuned = SimpleNamespace(train_config=saved, raw={})
    assert checkpoint_config(tuned).threshold == 0.8 and checkpoint_config(untuned).threshold == 0.5
