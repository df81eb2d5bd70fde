"""The "Prompt correction" widget: draw a box or click on a nodule, get LiteMedSAM's mask merged into the
editable nodule Labels layer, propagate it to neighbouring slices, undo and redo.

Box: a rectangle on the "prompt boxes" Shapes layer (on the CT's grid) prompts its slice. Click: a
click on the "prompt clicks" Points layer adds (normal click) or removes (Shift-click, or with
"Negative clicks" ticked). The mask goes to the nodule under the prompt (or a new id) on that slice
only. Model loading and every prompt run in a worker (:mod:`wsnodule_core.foundation.prompt`); the
main thread only merges the result (an :class:`~wsnodule_core.edits.EditHistory` step) and, in a
second worker, the neighbouring slices are encoded ahead for propagation. Undo/Redo (buttons, or
Ctrl+Z / Ctrl+Shift+Z on the prompt layers) revert these edits, not brush strokes.
"""

from __future__ import annotations

import time
from typing import Any

import napari
import numpy as np
from napari.qt.threading import create_worker
from qtpy.QtWidgets import (QCheckBox, QComboBox, QFormLayout, QGroupBox, QLabel, QPushButton, QSpinBox,
                            QWidget)

from napari_wsnodule._geometry import layer_geometry, volume_of_layer
from napari_wsnodule._layers import SOURCE_KEY, unique_layer_name
from napari_wsnodule._tasks import TaskReporter
from napari_wsnodule.widgets._base import WsnoduleWidget
from napari_wsnodule.widgets._view import row_of
from wsnodule_core.edits import Edit, EditHistory, combine_edits, delete_label_edit, merge_slice_edit
from wsnodule_core.errors import WsnoduleError

DIRECTIONS = (("both ways", "both"), ("up (z + 1)", "up"), ("down (z - 1)", "down"))
PROMPT_KEY = "wsnodule_prompt"  # metadata of the prompt layers: "boxes" or "clicks"


class PromptWidget(WsnoduleWidget):
    """Box and click prompts with LiteMedSAM, propagation, and undo/redo of the merged masks."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        self.model: Any = None       # LiteMedSam, loaded in the first task (tests give a stand-in)
        self.prompt_session: Any = None  # PromptSession of the picked CT
        self._session_source: Any = None
        self.history = EditHistory()
        self._history_layer: Any = None
        self.target: tuple[int, int] | None = None  # (slice, label) the last prompt went to
        self.last_latency_s: float | None = None
        self._prewarm_worker = None
        self.boxes_layer: Any = None
        self.clicks_layer: Any = None
        layout = self.layout()
        layout.addWidget(self._inputs_box())
        layout.addWidget(self._prompt_box())
        layout.addWidget(self._propagate_box())
        layout.addWidget(self._history_box())
        layout.addWidget(self.tasks)
        self._update_buttons()

    # --- layout -----------------------------------------------------------------------------

    def _inputs_box(self) -> QGroupBox:
        box = QGroupBox("CT and nodules")
        form = QFormLayout(box)
        self.image_combo = self.image_picker()
        self.labels_combo = self.labels_picker()
        self.labels_combo.setToolTip("The editable nodule layer the masks are merged into (one id per nodule).")
        self.labels_combo.currentIndexChanged.connect(lambda *_: self._update_buttons())
        form.addRow("CT", self.image_combo)
        form.addRow("Nodules", self.labels_combo)
        return box

    def _prompt_box(self) -> QGroupBox:
        box = QGroupBox("Prompt (LiteMedSAM)")
        form = QFormLayout(box)
        self.box_button = QPushButton("Box")
        self.box_button.setToolTip("Draw a rectangle around a nodule on the current slice.")
        self.box_button.clicked.connect(self.use_boxes)
        self.click_button = QPushButton("Click")
        self.click_button.setToolTip("Click a nodule to segment it or add a missed part; Shift-click removes.")
        self.click_button.clicked.connect(self.use_clicks)
        self.negative_check = QCheckBox("Negative clicks (remove)")
        self.negative_check.setToolTip("Every click removes (as Shift-click does).")
        self.latency_label = QLabel("Pick 'Box' or 'Click': the model loads while you aim.")
        self.latency_label.setWordWrap(True)
        form.addRow(row_of(self.box_button, self.click_button))
        form.addRow(self.negative_check)
        form.addRow(self.latency_label)
        return box

    def _propagate_box(self) -> QGroupBox:
        box = QGroupBox("Propagate the last nodule to neighbouring slices")
        form = QFormLayout(box)
        self.direction_combo = QComboBox()
        for text, value in DIRECTIONS:
            self.direction_combo.addItem(text, value)
        self.slices_spin = QSpinBox()
        self.slices_spin.setRange(0, 500)
        self.slices_spin.setSpecialValueText("until it ends")
        self.slices_spin.setToolTip("Slices per direction; 'until it ends' stops where the mask vanishes or "
                                    "stops standing out from its surroundings.")
        self.propagate_button = QPushButton("Propagate")
        self.propagate_button.clicked.connect(self.propagate)
        form.addRow("Direction", self.direction_combo)
        form.addRow("Slices", self.slices_spin)
        form.addRow(self.propagate_button)
        return box

    def _history_box(self) -> QGroupBox:
        box = QGroupBox("Edits")
        form = QFormLayout(box)
        self.undo_button = QPushButton("Undo")
        self.undo_button.clicked.connect(self.undo)
        self.redo_button = QPushButton("Redo")
        self.redo_button.clicked.connect(self.redo)
        self.delete_button = QPushButton("Delete nodule")
        self.delete_button.setToolTip("Remove the Labels layer's selected label (the last prompted nodule).")
        self.delete_button.clicked.connect(self.delete_nodule)
        form.addRow(row_of(self.undo_button, self.redo_button))
        form.addRow(self.delete_button)
        return box

    def _update_buttons(self) -> None:
        history = self._history()
        self.undo_button.setEnabled(history.can_undo)
        self.redo_button.setEnabled(history.can_redo)
        self.undo_button.setToolTip(f"Undo: {history.undo_name}" if history.can_undo else "Nothing to undo.")
        self.redo_button.setToolTip(f"Redo: {history.redo_name}" if history.can_redo else "Nothing to redo.")

    # --- the prompt layers ------------------------------------------------------------------

    def _volume(self, action: str) -> Any:
        image = self.image_combo.layer()
        if image is None:
            self.error(f"Open a CT (Load CT widget or File > Open) to {action}.")
            return None
        try:
            return volume_of_layer(image)
        except WsnoduleError as error:
            self.error(str(error))
            return None

    def use_boxes(self) -> Any:
        """The "prompt boxes" Shapes layer (made on the CT's grid), selected in rectangle mode."""
        volume = self._volume("draw a box")
        if volume is None:
            return None
        if self.boxes_layer is None or self.boxes_layer not in self.viewer.layers:
            layer = self.viewer.add_shapes(None, ndim=3, shape_type="rectangle", edge_color="yellow",
                                           face_color="transparent", edge_width=1.0,
                                           name=unique_layer_name(self.viewer, "prompt boxes"),
                                           metadata={PROMPT_KEY: "boxes", SOURCE_KEY: self.image_combo.layer()},
                                           **layer_geometry(volume))
            layer.events.data.connect(self._box_event)
            self._bind_history_keys(layer)
            self.boxes_layer = layer
        self.viewer.layers.selection.active = self.boxes_layer
        self.boxes_layer.mode = "add_rectangle"
        self._start_session()
        return self.boxes_layer

    def use_clicks(self) -> Any:
        """The "prompt clicks" Points layer (on the CT's grid), selected; clicks on it prompt."""
        volume = self._volume("click a nodule")
        if volume is None:
            return None
        if self.clicks_layer is None or self.clicks_layer not in self.viewer.layers:
            size = 3.0 / float(min(volume.spacing[1:]))  # about 3 mm across, in voxels
            layer = self.viewer.add_points(np.empty((0, 3)), ndim=3, size=size, face_color="lime",
                                           border_color="white", name=unique_layer_name(self.viewer, "prompt clicks"),
                                           metadata={PROMPT_KEY: "clicks", SOURCE_KEY: self.image_combo.layer()},
                                           **layer_geometry(volume))
            layer.mouse_drag_callbacks.append(self._click_callback)
            self._bind_history_keys(layer)
            self.clicks_layer = layer
        self.viewer.layers.selection.active = self.clicks_layer
        self.clicks_layer.mode = "pan_zoom"
        self._start_session()
        return self.clicks_layer

    def _bind_history_keys(self, layer: Any) -> None:
        layer.bind_key("Control-Z", lambda _: self.undo(), overwrite=True)
        layer.bind_key("Control-Shift-Z", lambda _: self.redo(), overwrite=True)

    def _box_event(self, event: Any) -> None:
        if str(getattr(event, "action", "added")) != "added" or not len(self.boxes_layer.data):
            return
        corners = np.asarray(self.boxes_layer.data[-1], float)
        z = int(round(float(corners[:, 0].mean())))
        lo, hi = corners[:, 1:].min(axis=0), corners[:, 1:].max(axis=0)
        if np.any(hi - lo < 1.0):
            return  # a click without a drag in rectangle mode: no box
        self.prompt_box(z, (lo[0], lo[1], hi[0], hi[1]))

    def _click_callback(self, layer: Any, event: Any):
        """A click (press and release without a drag) on the clicks layer prompts at that voxel."""
        yield
        dragged = False
        while event.type == "mouse_move":
            dragged = True
            yield
        if dragged:
            return
        negative = self.negative_check.isChecked() or "Shift" in event.modifiers
        self.click_at(layer.world_to_data(event.position), positive=not negative)

    # --- session ----------------------------------------------------------------------------

    def _start_session(self) -> None:
        """Load the model and start the CT's prompt session in a worker, ahead of the first prompt."""
        if self._session_ready() or self.tasks.busy:
            return
        volume = self._volume("prompt")
        if volume is not None:
            self.tasks.run("Loading LiteMedSAM", self._session_task(volume), lambda _: self._show_ready())

    def _session_ready(self) -> bool:
        return self.prompt_session is not None and self._session_source is self.image_combo.layer()

    def _session_task(self, volume: Any):
        source = self.image_combo.layer()

        def work(reporter: TaskReporter) -> Any:  # no Qt here: ``source`` was read on the main thread
            if self.prompt_session is None or self._session_source is not source:
                from wsnodule_core.foundation import EmbeddingCache
                from wsnodule_core.foundation.prompt import PromptSession

                if self.model is None:
                    self.model = self.session.lite_medsam()
                self.prompt_session = PromptSession(volume, model=self.model, cache=EmbeddingCache())
                self._session_source = source
            return self.prompt_session

        return work

    def _show_ready(self) -> None:
        self.latency_label.setText("Ready: the first prompt on a slice encodes it (about a second on a CPU), "
                                   "later ones there only decode.")

    def _run_prompt(self, name: str, prompt, on_mask) -> None:
        """Run ``prompt(session) -> SliceMask`` (and the session's start, if due) in a worker."""
        volume, labels = self._volume("prompt"), self._labels("prompt")
        if volume is None or labels is None:
            return
        if tuple(np.shape(labels.data)) != tuple(volume.shape):
            self.error(f"The nodule layer {labels.name!r} ({np.shape(labels.data)}) is not on the CT's grid "
                       f"({volume.shape}): pick the CT it was drawn on.")
            return
        start = self._session_task(volume)

        def work(reporter: TaskReporter) -> tuple[Any, float]:
            session = start(reporter)
            t0 = time.perf_counter()
            return prompt(session), time.perf_counter() - t0

        self.tasks.run(name, work, lambda out: on_mask(*out))

    # --- prompts ----------------------------------------------------------------------------

    def prompt_box(self, z: int, box_yx: tuple[float, float, float, float]) -> None:
        """Segment box ``(y0, x0, y1, x1)`` (voxel indices of slice ``z``) and merge the mask."""
        labels = self._labels("draw a box")
        if labels is None:
            return
        data = np.asarray(labels.data)
        if not 0 <= z < data.shape[0]:
            self.error(f"The box is on slice {z}, outside the CT (0..{data.shape[0] - 1}).")
            return
        label = _label_in(data, z, box_yx)
        self._run_prompt(f"Box on slice {z}", lambda s: s.box(z, box_yx),
                         lambda result, seconds: self._merge(result, label, f"box on slice {z}", seconds))

    def click_at(self, data_zyx: Any, positive: bool = True) -> None:
        """A click at voxel ``(z, y, x)``: positive segments or adds, negative removes."""
        labels = self._labels("click")
        if labels is None:
            return
        data = np.asarray(labels.data)
        z, y, x = (float(v) for v in data_zyx)
        z = int(round(z))
        if not (0 <= z < data.shape[0] and 0 <= y < data.shape[1] and 0 <= x < data.shape[2]):
            return  # a click beside the CT
        under = int(data[z, int(y), int(x)])
        current = None
        if under and self.target != (z, under):
            label, current = under, data[z] == under
        elif self.target is not None and self.target[0] == z:
            label = self.target[1]
        else:
            label = _new_label(data)
        if self.target != (z, label):
            self._forget(z)
        if self.clicks_layer is not None:
            self.clicks_layer.selected_data = set()  # else the colour below would repaint selected points
            self.clicks_layer.current_face_color = "lime" if positive else "red"
            self.clicks_layer.add(np.array([[z, y, x]]))
        kind = "positive" if positive else "negative"
        self._run_prompt(f"Click on slice {z}", lambda s: s.click(z, y, x, positive, current=current),
                         lambda result, seconds: self._merge(result, label, f"{kind} click on slice {z}", seconds))

    def _forget(self, z: int) -> None:
        if self.prompt_session is not None:
            self.prompt_session.forget(z)
        if self.clicks_layer is not None and len(self.clicks_layer.data):
            self.clicks_layer.selected_data = set()
            self.clicks_layer.data = np.empty((0, 3))

    def propagate(self) -> None:
        """Carry the last prompted nodule's mask to the neighbouring slices (one undo step)."""
        labels = self._labels("propagate")
        if labels is None:
            return
        data = np.asarray(labels.data)
        if self.target is None:  # the slice shown and the label selected in the layer's controls
            z = int(round(float(labels.world_to_data(self.viewer.dims.point)[0])))
            label = int(labels.selected_label)
        else:
            z, label = self.target
        mask = data[z] == label if 0 <= z < data.shape[0] else np.zeros(data.shape[1:], bool)
        if not mask.any():
            self.error(f"Nodule {label} has no voxel on slice {z}: prompt it there with a box or a click first.")
            return
        direction = str(self.direction_combo.currentData())
        n = self.slices_spin.value() or None

        def prompt(session: Any) -> Any:
            return session.propagate(z, mask, direction, n)

        self._run_prompt(f"Propagating nodule {label}", prompt,
                         lambda results, seconds: self._merge_many(results, label, z, direction, seconds))

    # --- merging (main thread) --------------------------------------------------------------

    def _merge(self, result: Any, label: int, name: str, seconds: float) -> None:
        labels = self.labels_combo.layer()
        if labels is None:
            return
        data = self._writable(labels)
        self._apply(labels, merge_slice_edit(data, result.z, result.mask, label, f"{name} (nodule {label})"))
        self.target = (result.z, label)
        labels.selected_label = label
        self.last_latency_s = seconds
        how = "encoded and decoded" if result.encoded else "decoded (slice cached)"
        self.latency_label.setText(f"Nodule {label}, slice {result.z}: {how} in {seconds * 1000:.0f} ms.")
        self._prewarm(result)

    def _merge_many(self, results: list, label: int, z: int, direction: str, seconds: float) -> None:
        labels = self.labels_combo.layer()
        if labels is None:
            return
        data = self._writable(labels)
        name = f"propagate nodule {label} from slice {z} ({direction})"
        edit = combine_edits([merge_slice_edit(data, r.z, r.mask, label, name) for r in results], name)
        self._apply(labels, edit)
        slices = [r.z for r in results]
        self.latency_label.setText(f"Nodule {label} propagated to {len(slices)} slice(s)"
                                   + (f" ({min(slices)}–{max(slices)})" if slices else "")
                                   + f" in {seconds:.1f} s.")

    def _writable(self, labels: Any) -> np.ndarray:
        if labels is not self._history_layer:
            self.history, self._history_layer = EditHistory(), labels
        data = labels.data
        if not isinstance(data, np.ndarray) or not data.flags.c_contiguous:
            labels.data = data = np.ascontiguousarray(np.asarray(data))
        return data

    def _apply(self, labels: Any, edit: Edit | None) -> None:
        self._show_edit(labels, self.history.apply(labels.data, edit))

    def _show_edit(self, labels: Any, edit: Edit | None) -> None:
        if edit is not None:
            labels.refresh()
            where = np.unravel_index(edit.index, labels.data.shape)
            labels.events.paint(value=[(where, edit.old, edit.new)])  # what napari's own edits emit
        self._update_buttons()

    def _history(self) -> EditHistory:
        if self.labels_combo.layer() is not self._history_layer:
            return EditHistory()  # edits of another layer are not this one's to undo
        return self.history

    def undo(self) -> None:
        """Revert the last prompt, propagation or deletion (voxels painted since keep their paint)."""
        labels = self.labels_combo.layer()
        if labels is not None and self._history().can_undo:
            self._show_edit(labels, self.history.undo(labels.data))

    def redo(self) -> None:
        labels = self.labels_combo.layer()
        if labels is not None and self._history().can_redo:
            self._show_edit(labels, self.history.redo(labels.data))

    def delete_nodule(self) -> None:
        """Remove the Labels layer's selected label from every slice (one undo step)."""
        labels = self._labels("delete a nodule")
        if labels is None:
            return
        label = int(labels.selected_label)
        data = self._writable(labels)
        edit = delete_label_edit(data, label)
        if edit is None:
            self.error(f"No voxel holds label {label}: pick the nodule's label in the Labels layer's controls.")
            return
        self._apply(labels, edit)
        if self.target is not None and self.target[1] == label:
            self.target = None

    def _labels(self, action: str) -> Any:
        labels = self.labels_combo.layer()
        if labels is None:
            self.error(f"Pick the nodule Labels layer to {action} into (e.g. the NAM widget's nodules), or add "
                       "an empty one (layer list: new labels layer).")
            return None
        return labels

    # --- pre-warm ---------------------------------------------------------------------------

    @property
    def prewarming(self) -> bool:
        return self._prewarm_worker is not None

    def _prewarm(self, result: Any) -> None:
        """Encode the slices next to ``result`` in a worker, so propagating from it starts at once."""
        session = self.prompt_session
        if session is None or self._prewarm_worker is not None or result.empty:
            return
        worker = create_worker(session.prewarm_neighbours, result, _start_thread=False, _ignore_errors=True)
        worker.finished.connect(self._prewarm_done)
        self._prewarm_worker = worker
        worker.start()

    def _prewarm_done(self) -> None:
        self._prewarm_worker = None


def _label_in(data: np.ndarray, z: int, box_yx: tuple[float, ...]) -> int:
    """The nodule a box on slice ``z`` corrects: the commonest label in it there (or on a neighbouring
    slice), else a new one."""
    y0, x0 = (max(int(np.floor(v)), 0) for v in box_yx[:2])
    y1, x1 = (int(np.ceil(v)) for v in box_yx[2:])
    for dz in (0, -1, 1):
        if 0 <= z + dz < data.shape[0]:
            values = data[z + dz, y0:y1, x0:x1]
            values = values[values > 0]
            if values.size:
                return int(np.bincount(values.astype(np.int64)).argmax())
    return _new_label(data)


def _new_label(data: np.ndarray) -> int:
    return int(data.max()) + 1 if data.size else 1
