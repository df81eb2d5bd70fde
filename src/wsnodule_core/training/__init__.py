"""Training infrastructure shared by every method: devices, checkpoints, callbacks, DDP, sampling."""

from wsnodule_core.training.callbacks import TrainCallbacks
from wsnodule_core.training.checkpoint import Checkpoint, load_checkpoint, load_classifier, save_checkpoint
from wsnodule_core.training.device import DeviceChoice, choose_device

__all__ = ["Checkpoint", "DeviceChoice", "TrainCallbacks", "choose_device", "load_checkpoint",
           "load_classifier", "save_checkpoint"]
