"""What every wsnodule dock widget has: the viewer, the viewer's session, a task panel, layer pickers.

A new widget (flow guidance, sparse annotations, ...) subclasses :class:`WsnoduleWidget` and
composes one :class:`Panel` per stage (a titled box of that stage's controls, in a short module
of its own), adds ``self.tasks`` where its progress should show, and runs heavy work with
``self.tasks.run(name, fn, on_result)``: ``fn(reporter)`` runs in a thread worker and must only
touch numpy/torch objects (the method itself lives in ``wsnodule_core``), ``on_result`` runs on the
main thread and adds the layers. Then it is listed in ``napari.yaml`` (a command and a widget entry).
"""

from __future__ import annotations

from typing import Any

from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QComboBox, QGroupBox, QLabel, QPushButton, QVBoxLayout, QWidget

import napari
from napari_wsnodule._session import PluginSession, session_for
from napari_wsnodule._tasks import TaskPanel
from napari_wsnodule._warm_up import warm_up_layers_in_background

DEVICES = (("Auto", "auto"), ("CPU", "cpu"), ("CUDA", "cuda"), ("MPS (Apple)", "mps"))


class LayerPicker(QComboBox):
    """A combo box of the viewer's layers of some types, kept in sync with the layer list.

    ``layer()`` returns the layer object itself: a task that captured it keeps writing to that
    layer even if the user renames or re-selects layers meanwhile.
    """

    def __init__(self, viewer: napari.Viewer, layer_types: tuple[type, ...], *, allow_none: bool = False,
                 parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._viewer = viewer
        self._types = layer_types
        self._allow_none = allow_none
        events = viewer.layers.events
        for event in (events.inserted, events.removed, events.reordered):
            event.connect(self.refresh)
        self.refresh()

    def refresh(self, *_: Any) -> None:
        current = self.layer()
        self.blockSignals(True)
        self.clear()
        if self._allow_none:
            self.addItem("(none)", None)
        for layer in self._viewer.layers:
            if isinstance(layer, self._types):
                self.addItem(layer.name, layer)
        if current is not None:
            for i in range(self.count()):
                if self.itemData(i) is current:
                    self.setCurrentIndex(i)
        self.blockSignals(False)

    def layer(self) -> Any:
        return self.currentData() if self.count() else None

    def select(self, layer: Any) -> None:
        self.refresh()
        for i in range(self.count()):
            if self.itemData(i) is layer:
                self.setCurrentIndex(i)
                return


class WsnoduleWidget(QWidget):
    """Base of the dock widgets: ``viewer``, ``session`` and ``tasks`` (a :class:`TaskPanel`)."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.viewer = napari_viewer
        self.session: PluginSession = session_for(napari_viewer)
        self.tasks = TaskPanel(self)
        self.last_error_text: str | None = None
        self.setLayout(QVBoxLayout())
        warm_up_layers_in_background()  # the first result mask then adds without a one-off import

    def error(self, text: str) -> None:
        """Show ``text`` as an error (and keep it in ``last_error_text``)."""
        self.last_error_text = text
        show_error(text)

    def info(self, text: str) -> None:
        show_info(text)

    def add_run_row(self, text: str, slot: Any) -> QPushButton:
        """Add the dock's action button (``slot`` on click), its progress (``self.tasks``) and a wrapping
        ``self.summary_label`` under them, in that order; return the button."""
        button = QPushButton(text)
        button.clicked.connect(slot)
        self.summary_label = QLabel("")
        self.summary_label.setWordWrap(True)
        layout = self.layout()
        for widget in (button, self.tasks, self.summary_label):
            layout.addWidget(widget)
        return button

    def image_picker(self, **kwargs: Any) -> LayerPicker:
        return LayerPicker(self.viewer, (napari.layers.Image,), **kwargs)

    def labels_picker(self, **kwargs: Any) -> LayerPicker:
        return LayerPicker(self.viewer, (napari.layers.Labels,), **kwargs)


class Panel(QGroupBox):
    """One stage of a dock widget: a titled box of controls that runs its work through the dock's tasks
    and reports errors through the dock."""

    def __init__(self, title: str, dock: WsnoduleWidget) -> None:
        super().__init__(title)
        self.dock = dock

    @property
    def viewer(self) -> napari.Viewer:
        return self.dock.viewer

    @property
    def session(self) -> PluginSession:
        return self.dock.session

    @property
    def tasks(self) -> TaskPanel:
        return self.dock.tasks

    def error(self, text: str) -> None:
        self.dock.error(text)


def device_text(preference: str) -> str:
    """What ``choose_device(preference)`` gives, with the GPU's name and why a wish was not met."""
    from wsnodule_core.training.device import choose_device

    choice = choose_device(preference)
    text = f"Using: {choice.device}"
    if choice.device.type == "cuda":
        import torch

        text += f" ({torch.cuda.get_device_name(choice.device)})"
    if choice.fallback_reason:
        text += f" — {choice.fallback_reason}"
    return text


def device_picker() -> tuple[QComboBox, QLabel]:
    """The device combo (Auto, CPU, CUDA, MPS) and a label that says what it resolves to, kept in step."""
    combo, label = QComboBox(), QLabel()
    label.setWordWrap(True)
    for text, value in DEVICES:
        combo.addItem(text, value)
    combo.currentIndexChanged.connect(lambda *_: label.setText(device_text(str(combo.currentData()))))
    label.setText(device_text(str(combo.currentData())))
    return combo, label
