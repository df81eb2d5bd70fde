"""What the plugin's widgets share inside one viewer: the models that are loaded or trained, and
LiteMedSAM (loaded once for the Segment and Prompt correction panels).

One :class:`PluginSession` per viewer (kept in a weak dictionary, so it goes with the viewer).
The model widget adds models; the NAM widget (and later the flow and sparse-annotation widgets)
lists them and listens to ``models_changed``.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from psygnal import Signal

from wsnodule_core.training.device import DeviceChoice


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A model ready to use: the module (eval mode, on ``device``), its checkpoint and where it came from."""

    name: str
    kind: str                 # the checkpoint kind: a method's KIND constant
    model: Any
    checkpoint: Any           # wsnodule_core.training.checkpoint.Checkpoint
    device: DeviceChoice
    path: Path | None = None  # the checkpoint file it was loaded from or trained into


class PluginSession:
    """Models shared by the widgets of one viewer."""

    models_changed = Signal()

    def __init__(self) -> None:
        self._models: dict[str, LoadedModel] = {}
        self._lite_medsam: Any = None
        self._lite_medsam_lock = threading.Lock()

    def lite_medsam(self) -> Any:
        """LiteMedSAM from its wheel, loaded on the first call (call it from a worker: about a second)
        and shared by every panel of this viewer afterwards."""
        with self._lite_medsam_lock:
            if self._lite_medsam is None:
                from wsnodule_core.foundation import load_lite_medsam

                self._lite_medsam = load_lite_medsam("auto")
            return self._lite_medsam

    @property
    def models(self) -> dict[str, LoadedModel]:
        return dict(self._models)

    def models_of_kind(self, kind: str) -> list[LoadedModel]:
        return [m for m in self._models.values() if m.kind == kind]

    def unique_name(self, stem: str) -> str:
        name, i = stem, 2
        while name in self._models:
            name, i = f"{stem} ({i})", i + 1
        return name

    def add_model(self, model: LoadedModel) -> LoadedModel:
        """Add ``model`` (renamed with a suffix if its name is taken: nothing is replaced silently)."""
        if model.name in self._models:
            model = LoadedModel(self.unique_name(model.name), model.kind, model.model, model.checkpoint,
                                model.device, model.path)
        self._models[model.name] = model
        self.models_changed.emit()
        return model

    def remove_model(self, name: str) -> None:
        if self._models.pop(name, None) is not None:
            self.models_changed.emit()


_SESSIONS: "weakref.WeakKeyDictionary[Any, PluginSession]" = weakref.WeakKeyDictionary()


def session_for(viewer: Any) -> PluginSession:
    """The session of ``viewer`` (created on first use)."""
    session = _SESSIONS.get(viewer)
    if session is None:
        session = _SESSIONS[viewer] = PluginSession()
    return session
