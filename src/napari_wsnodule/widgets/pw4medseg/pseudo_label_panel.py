"""The PW4MedSeg widget's pseudo-label panel: box and slice priors, and the probabilistic pseudo-label."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from qtpy.QtWidgets import QComboBox, QFormLayout, QPushButton, QVBoxLayout

from napari_wsnodule._layers import result_name
from napari_wsnodule._tasks import TaskReporter
from napari_wsnodule.widgets._base import Panel
from wsnodule_core.errors import LungSegmentationError
from wsnodule_core.io.volume import Volume
from wsnodule_core.pw4medseg.annotations import SparseAnnotations
from wsnodule_core.pw4medseg.pseudo_labels import (
    BOX_DESIGNS,
    SLICE_DESIGNS,
    PseudoLabel,
    PseudoLabelConfig,
    pseudo_label,
)

if TYPE_CHECKING:
    from napari_wsnodule.widgets.pw4medseg.dock import Pw4MedSegWidget


@dataclass(frozen=True, eq=False)
class PseudoRun:
    """A pseudo-label made from the annotations of one CT layer."""

    source: Any
    volume: Volume
    annotations: SparseAnnotations
    label: PseudoLabel
    lungs: np.ndarray | None


def _design_combo(designs: tuple[str, ...], current: str) -> QComboBox:
    combo = QComboBox()
    for design in designs:
        combo.addItem(design, design)
    combo.setCurrentIndex(designs.index(current))
    return combo


class PseudoLabelPanel(Panel):
    """Box and slice prior designs; 'Make pseudo-label' runs :func:`pseudo_label` in a worker."""

    def __init__(self, dock: Pw4MedSegWidget) -> None:
        super().__init__("Pseudo-label", dock)
        self.dock: Pw4MedSegWidget = dock
        outer = QVBoxLayout(self)
        form = QFormLayout()
        defaults = PseudoLabelConfig()
        self.box_design_combo = _design_combo(BOX_DESIGNS, defaults.box_design)
        self.box_design_combo.setToolTip("intensity: the dense structure at the box centre; ellipsoid: the "
                                         "inscribed ellipsoid; uniform: the whole box.")
        self.slice_design_combo = _design_combo(SLICE_DESIGNS, defaults.slice_design)
        form.addRow("Box prior", self.box_design_combo)
        form.addRow("Slice prior", self.slice_design_combo)
        outer.addLayout(form)
        self.pseudo_button = QPushButton("Make pseudo-label")
        self.pseudo_button.clicked.connect(self.make_pseudo_label)
        outer.addWidget(self.pseudo_button)

    def config(self) -> PseudoLabelConfig:
        return PseudoLabelConfig(box_design=str(self.box_design_combo.currentData()),
                                 slice_design=str(self.slice_design_combo.currentData()))

    def make_pseudo_label(self) -> None:
        """Pseudo-label probability and confidence of the picked CT from its annotations (thread worker)."""
        annotations_panel = self.dock.annotations
        got = annotations_panel.source_volume("make a pseudo-label")
        if got is None or self.dock.busy_showing():
            return
        source, volume = got
        annotations = annotations_panel.read(source, volume)
        if annotations is None:
            return
        lungs = annotations_panel.lungs(volume)
        if lungs is False:
            return
        config = self.config()

        def work(reporter: TaskReporter) -> PseudoRun:
            try:
                label = pseudo_label(volume, annotations, config, lungs,
                                     progress=reporter.progress_fn("pseudo-label: annotation sources"),
                                     cancel=reporter.cancelled)
            except LungSegmentationError as error:
                raise LungSegmentationError(f"{error} Or pick a lung mask under 'Lungs' (marked slices need "
                                            "one).") from error
            return PseudoRun(source, volume, annotations, label, lungs)

        self.tasks.run(f"Pseudo-label of {source.name}", work, self.show_pseudo_label)

    def show_pseudo_label(self, run: PseudoRun) -> None:
        probability, confidence = run.label.volumes()
        dock = self.dock
        dock.last_pseudo = run
        label_name, confidence_name = (result_name(run.source, what)
                                       for what in ("pseudo-label", "pseudo-label confidence"))
        dock.show_layers([
            ("pseudo_probability", lambda: dock.map_layer(probability, label_name, run.source,
                                                          "pw4medseg:pseudo_probability", "magma")),
            ("pseudo_confidence", lambda: dock.map_layer(confidence, confidence_name,
                                                         run.source, "pw4medseg:pseudo_confidence", "cyan",
                                                         visible=False)),
        ], lambda layers: self._shown(run))

    def _shown(self, run: PseudoRun) -> None:
        a = run.annotations
        parts = [f"{len(a.points)} point set(s)" if a.points else "", f"{len(a.boxes)} box(es)" if a.boxes else "",
                 f"{len(a.slices.slices)} marked slice(s)" if a.slices else ""]
        voxels = int(np.count_nonzero(run.label.probability > 0.5))
        self.dock.summary_label.setText(
            f"Pseudo-label of '{run.source.name}' from {', '.join(p for p in parts if p)}: {voxels} voxels above "
            "0.5. Press Train to fit the network to it.")
