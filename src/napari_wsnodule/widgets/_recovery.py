"""The export panel's autosave: a recovery file of the mask being edited, offered back on reopening its CT.

Two seconds after the last edit the mask is written (off the main thread) to the CT's recovery file
(:mod:`wsnodule_core.data.recovery`: ``$WSNODULE_CACHE/recovery``, else ``~/.cache/wsnodule/recovery``).
When a CT is opened for which a recovery exists that this session did not write (the window was
closed or crashed before an export), the box shows it with Restore and Discard; a successful export
deletes it.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_info
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QGroupBox, QLabel, QPushButton, QVBoxLayout

from napari_wsnodule._geometry import volume_of_layer
from napari_wsnodule._layers import add_volume_layer
from napari_wsnodule._provenance import EDITED_KEY, SOURCE_METHOD_KEY, source_method_of
from napari_wsnodule.widgets._view import row_of
from wsnodule_core.data.recovery import (
    Recovery,
    delete_recovery,
    find_recovery,
    read_recovery,
    recovery_paths,
    write_recovery,
)
from wsnodule_core.errors import WsnoduleError

AUTOSAVE_DELAY_MS = 2000  # after the last edit


class RecoveryBox(QGroupBox):
    """Autosave of the edited mask and the offer to restore a CT's recovery.

    ``pair`` gives the mask and CT layers to save (``(labels, image)`` or None); ``tasks`` runs the
    restore; ``restored(layer)`` is called with the layer added by a restore.
    """

    def __init__(self, viewer: Any, pair: Callable[[], tuple[Any, Any] | None], tasks: Any,
                 restored: Callable[[Any], None]) -> None:
        super().__init__("Recovery")
        self.viewer, self._pair, self._tasks, self._restored = viewer, pair, tasks, restored
        self.offered: Recovery | None = None
        self.offered_ct: Any = None
        self.last_saved: Path | None = None
        self.last_problem: str | None = None
        self._written: dict[Path, int] = {}  # recovery file -> id of the layer whose edits it holds
        self._checked: set[int] = set()
        self._worker = None
        self._again = False
        self._edits = self._held = 0
        self._timer = QTimer(self)
        self._timer.setSingleShot(True)
        self._timer.setInterval(AUTOSAVE_DELAY_MS)
        self._timer.timeout.connect(self.save_now)
        layout = QVBoxLayout(self)
        self.status_label = QLabel("Edits are saved to a recovery file 2 s after you stop.")
        self.status_label.setWordWrap(True)
        self.restore_button = QPushButton("Restore")
        self.restore_button.setToolTip("Add the recovered mask as a new Labels layer on this CT.")
        self.restore_button.clicked.connect(self.restore)
        self.discard_button = QPushButton("Discard")
        self.discard_button.setToolTip("Delete the recovery file.")
        self.discard_button.clicked.connect(self.discard)
        layout.addWidget(self.status_label)
        layout.addWidget(row_of(self.restore_button, self.discard_button))
        self._show_offer(None, None)

    # --- autosave ------------------------------------------------------------------------------

    def edited(self, *_: Any) -> None:
        """An edit happened: save once the edits pause."""
        self._edits += 1
        self._timer.start()

    @property
    def saving(self) -> bool:
        """True while a save is due or running (tests wait for it to end)."""
        return self._timer.isActive() or self._worker is not None or self._again

    def save_now(self) -> None:
        """Write the current mask to its CT's recovery file in a worker (once more if one is running)."""
        if self._worker is not None:
            self._again = True
            return
        self._again = False
        pair = self._pair()
        if pair is None:
            return
        labels, image = pair
        try:
            mask, ct = volume_of_layer(labels), volume_of_layer(image)
        except WsnoduleError as error:
            self._problem(str(error))
            return
        if mask.shape != ct.shape:
            return  # a patch mask: the CT-grid mask is the one to recover
        name, method, owner = labels.name, source_method_of(labels), id(labels)

        def work() -> Path:
            # a copy: the user may paint while this runs
            return write_recovery(np.array(mask.array, copy=True), ct, layer_name=name, source_method=method)

        worker = create_worker(work, _start_thread=False)
        worker.returned.connect(lambda path: self._saved(path, owner))
        worker.errored.connect(lambda error: self._problem(f"autosave failed: {error}"))
        worker.finished.connect(self._save_finished)
        self._worker = worker
        worker.start()

    def _saved(self, path: Path, owner: int) -> None:
        self.last_saved = Path(path)
        self._written[self.last_saved] = owner
        self.last_problem = None
        if self.offered is None:
            self.status_label.setText(f"Edits saved to the recovery file {path.name}.")

    def _save_finished(self) -> None:
        self._worker = None
        if self._again:
            self.save_now()

    def _problem(self, text: str) -> None:
        self.last_problem = text
        self.status_label.setText(f"Recovery: {text}")

    def hold(self) -> None:
        """An export starts with the mask as it is now (see :meth:`exported`)."""
        self._held = self._edits

    def exported(self, ct: Any, layer: Any) -> None:
        """``layer``, a mask of the CT Volume ``ct``, was exported: delete the CT's recovery when it holds
        this layer's edits, unless the annotator edited since the export started (those edits are saved
        as usual). A failed export, or an export of another layer, changes nothing."""
        if self._edits != self._held:
            return
        self._timer.stop()
        if self._worker is not None:  # a save is being written: decide once it is written
            self._worker.finished.connect(lambda: self._delete(ct, layer))
            return
        self._delete(ct, layer)

    def _delete(self, ct: Any, layer: Any) -> None:
        path = recovery_paths(ct)[0]
        if self._written.get(path) != id(layer):
            return
        delete_recovery(ct)
        self._written.pop(path, None)
        if self.offered is not None and self.offered.path == path:
            self._show_offer(None, None)
        self.status_label.setText("Exported; the recovery file was deleted.")

    # --- offering and restoring --------------------------------------------------------------

    def check(self, image: Any) -> Recovery | None:
        """Offer ``image``'s recovery when one exists that this session did not write (each image once,
        one offer at a time)."""
        if image is None or id(image) in self._checked or self.offered is not None:
            return self.offered
        self._checked.add(id(image))
        try:
            found = find_recovery(volume_of_layer(image))
        except WsnoduleError:
            return self.offered
        if found is not None and found.path not in self._written:
            self._show_offer(found, image)
            show_info(f"An unsaved edit of {image.name} ({found.layer_name or 'a mask'}, {found.age_text()}) can be "
                      "restored in the Nodules and export panel.")
        return self.offered

    def _show_offer(self, recovery: Recovery | None, image: Any) -> None:
        self.offered, self.offered_ct = recovery, image
        self.restore_button.setVisible(recovery is not None)
        self.discard_button.setVisible(recovery is not None)
        if recovery is not None:
            what = f"'{recovery.layer_name}'" if recovery.layer_name else "a mask"
            method = f" ({recovery.source_method})" if recovery.source_method else ""
            self.status_label.setText(f"Unsaved edits of {image.name} were recovered: {what}{method}, saved "
                                      f"{recovery.age_text()}, not exported. Restore them as a new layer?")
        else:
            self.status_label.setText("Edits are saved to a recovery file 2 s after you stop.")

    def restore(self) -> None:
        """Read the offered recovery (in a task) and add it as a new Labels layer on its CT."""
        recovery, image = self.offered, self.offered_ct
        if recovery is None or image is None:
            return
        ct = volume_of_layer(image)

        def work(reporter: Any):
            return read_recovery(recovery, ct)

        self._tasks.run(f"Restoring the recovered mask of {image.name}", work,
                        lambda mask: self._add_restored(mask, recovery, image))

    def _add_restored(self, mask: Any, recovery: Recovery, image: Any) -> None:
        name = f"{recovery.layer_name or image.name + ': nodules'} (recovered)"
        layer = add_volume_layer(self.viewer, mask, "labels", name, source=image,
                                 metadata={SOURCE_METHOD_KEY: recovery.source_method or None, EDITED_KEY: True})
        self._written[recovery.path] = id(layer)  # the restored layer's edits are the ones it holds
        self._show_offer(None, None)
        self._restored(layer)

    def discard(self) -> None:
        """Delete the offered recovery files."""
        recovery = self.offered
        if recovery is not None:
            for path in (recovery.info_path, recovery.path):
                path.unlink(missing_ok=True)
        self._show_offer(None, None)
