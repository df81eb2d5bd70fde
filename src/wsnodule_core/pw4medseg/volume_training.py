"""Training PW4MedSeg on one CT and its pseudo-label (the plugin's Train button, or a script).

The pseudo-label made from a user's annotations (:func:`~wsnodule_core.pw4medseg.pseudo_labels.pseudo_label`)
is the soft target and its confidence the voxel weights; the CT alone is the training set. The run
writes ``best.pt`` / ``last.pt`` like any PW4MedSeg run, and the trained model comes back loaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from wsnodule_core.io.volume import Volume
from wsnodule_core.pw4medseg.pseudo_labels import PseudoLabel
from wsnodule_core.pw4medseg.config import PwTrainConfig, PwTrainResult, checkpoint_config, load_pw4medseg
from wsnodule_core.pw4medseg.targets import TargetCase
from wsnodule_core.pw4medseg.train import train_pw4medseg
from wsnodule_core.training.callbacks import TrainCallbacks, as_callbacks
from wsnodule_core.training.checkpoint import Checkpoint, load_checkpoint
from wsnodule_core.training.device import DeviceChoice, choose_device

Progress = Callable[[int, int], None]
Cancel = Callable[[], bool]


@dataclass(frozen=True, eq=False)
class VolumeTrainingResult:
    """The run on one CT and, unless it was cancelled, its model loaded from ``best.pt`` (else
    ``last.pt``)."""

    run: PwTrainResult
    device: DeviceChoice
    model: Any | None = None              # ProbabilisticUNETR in eval mode on ``device``; None when cancelled
    checkpoint: Checkpoint | None = None  # the checkpoint the model came from
    config: PwTrainConfig | None = None   # its settings (threshold: the validation-chosen one, if any)

    @property
    def cancelled(self) -> bool:
        return bool(self.run.cancelled)


def training_case(volume: Volume, label: PseudoLabel, lungs: np.ndarray | None = None,
                  name: str = "volume") -> TargetCase:
    """The CT with its pseudo-label (soft probability and confidence) as a ready training target.

    Parameters
    ----------
    volume
        The CT in HU.
    label
        Its pseudo-label, on the CT's grid.
    lungs
        Optional lung mask on the CT's grid: training crops stay in it.
    name
        The case id of the run's records.
    """
    return TargetCase(name, volume, np.asarray(label.probability, np.float32),
                      np.asarray(label.confidence, np.float32),
                      None if lungs is None else np.asarray(lungs, bool))


def train_on_volume(volume: Volume, label: PseudoLabel, out_dir: str | os.PathLike, config: PwTrainConfig, *,
                    lungs: np.ndarray | None = None, name: str = "volume",
                    callbacks: TrainCallbacks | object | None = None, progress: Progress | None = None,
                    cancel: Cancel | None = None) -> VolumeTrainingResult:
    """Train PW4MedSeg on one CT and its pseudo-label; the model comes back loaded.

    Parameters
    ----------
    volume, label, lungs, name
        The training case (see :func:`training_case`).
    out_dir
        A new folder for ``best.pt`` and ``last.pt`` (a folder holding checkpoints is refused).
    config
        The run's settings (``config.device`` is where it trains and where the model is loaded).
    callbacks
        ``on_step(step, total, loss)`` / ``on_epoch(epoch, metrics)`` / ``should_stop()`` of the run.
    progress
        ``progress(done, total)`` while the training target is built.
    cancel
        ``cancel()`` True stops at the next step (``last.pt`` is kept; no model is loaded).

    Returns
    -------
    VolumeTrainingResult

    Examples
    --------
    >>> label = pseudo_label(ct, SparseAnnotations(points=[...]), PseudoLabelConfig())  # doctest: +SKIP
    >>> trained = train_on_volume(ct, label, "runs/mine", PwTrainConfig(epochs=20))  # doctest: +SKIP
    >>> trained.model, trained.checkpoint.path  # doctest: +SKIP
    """
    callbacks = as_callbacks(callbacks)
    if cancel is not None:
        should_stop = callbacks.should_stop
        callbacks = TrainCallbacks(callbacks.on_step, callbacks.on_epoch,
                                   lambda: bool(cancel()) or should_stop())
    device = choose_device(config.device)
    run = train_pw4medseg([training_case(volume, label, lungs, name)], out_dir, config, callbacks,
                          progress=progress)
    if run.cancelled:
        return VolumeTrainingResult(run, device)
    path = Path(run.best_path or run.last_path)
    model, _ = load_pw4medseg(path, device.device)
    checkpoint = load_checkpoint(path)
    return VolumeTrainingResult(run, device, model, checkpoint, checkpoint_config(checkpoint))
