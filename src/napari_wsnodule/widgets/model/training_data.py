"""Where the Model widget's training slices come from: a data set folder or the open image and its labels.

Each reader is checked on the main thread (errors shown at once) and returns a function the worker
calls with its reporter and the run's config to get the ``(train, val)`` slices.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from napari_wsnodule._geometry import mask_volume, volume_of_layer
from napari_wsnodule._tasks import TaskReporter
from wsnodule_core.errors import WsnoduleError
from wsnodule_core.nam.train_config import TrainConfig

VAL_FRACTION = 0.2  # of the open volume's slices held out for validation

SliceSource = Callable[[TaskReporter, TrainConfig], tuple]


def dataset_source(text: str, error: Callable[[str], None]) -> SliceSource | None:
    """The training and validation slices of the data set folder ``text``; None after an error shown."""
    folder = Path(text).expanduser()
    if not text or not (folder / "dataset.json").is_file():
        error(f"{folder if text else 'No data set folder given'}: no dataset.json there. Choose a folder made by "
              "`wsnodule data ...` or saved by 'save as training data' in the Nodules and export widget, or "
              "train on the open image and its labels instead.")
        return None

    def from_dataset(reporter: TaskReporter, config: TrainConfig) -> tuple:
        from wsnodule_core.data.dataset import load_dataset
        from wsnodule_core.data.slices import slices_from_dataset

        dataset = load_dataset(folder)
        slice_config = config.slice_config()
        train = slices_from_dataset(dataset, "train", slice_config, cancel=reporter.cancelled,
                                    progress=reporter.progress_fn("reading the training cases"))
        reporter.raise_if_cancelled()
        val = slices_from_dataset(dataset, "val", slice_config, cancel=reporter.cancelled,
                                  progress=reporter.progress_fn("reading the validation cases"))
        reporter.raise_if_cancelled()
        return train, (val if len(val) else None)

    return from_dataset


def layers_source(image: Any, labels: Any, error: Callable[[str], None]) -> SliceSource | None:
    """The slices of an Image layer with a Labels layer of its nodules (lungs segmented on the fly, a share
    held out for validation); None after an error shown."""
    if image is None or labels is None:
        error("Pick an Image layer (the CT) and a Labels layer with the nodules painted on it, or train on a "
              "data set folder instead.")
        return None
    try:
        volume = volume_of_layer(image)
        mask = mask_volume(labels.data, volume).array.copy()  # a copy: the user may keep painting
    except WsnoduleError as problem:
        error(str(problem))
        return None
    name = image.name

    def from_layers(reporter: TaskReporter, config: TrainConfig) -> tuple:
        from wsnodule_core.nam.volume_slices import volume_training_slices

        reporter.stage(f"cutting the training slices of '{name}' (lungs, crops)")
        return volume_training_slices(volume, mask, config.slice_config(), val_fraction=VAL_FRACTION,
                                      seed=config.seed, name=name)

    return from_layers
