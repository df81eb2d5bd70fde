"""Open the plugin, use each widget as a user would, and save a screenshot of each at work.

Usage (from the repository root; napari needs a screen, a virtual one will do)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/scripts/plugin_screenshots.py [--images docs/images]

Writes ``plugin_load.png``, ``plugin_model.png``, ``plugin_nam.png``, ``plugin_edit_export.png``,
``plugin_pw4medseg.png`` and, when ``WSNODULE_FLOW_PRIOR`` and ``WSNODULE_FLOW_PREDICTOR`` name a
trained prior and predictor (e.g. those of ``benchmarks/flow_table.py``), ``plugin_flow.png``: the
pictures of docs/plugin.md. The phantom sample in the lung window, a NAM classifier trained on it
from the Model widget, its segmentation with every map, the nodule table of the result, a
pseudo-label from one point per nodule with a tiny probabilistic transformer trained on it, and the
flow counterfactual of a nodule patch. Takes a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _event_loop import run_until  # noqa: E402


def _settle(seconds: float = 0.5) -> None:
    until = time.perf_counter() + seconds
    run_until(lambda: time.perf_counter() >= until, seconds + 10)


def _chosen_row_on_a_nodule(table, truth) -> int | None:
    """The first table row of a chosen candidate on a slice with a true nodule (else any chosen one)."""
    from qtpy.QtCore import Qt

    chosen = [r for r in range(table.rowCount()) if table.item(r, 5).text()]
    on_nodule = [r for r in chosen if truth[int(table.item(r, 0).data(Qt.UserRole)[0])].any()]
    return (on_nodule or chosen or [None])[0]


def _nodule_centres(truth) -> list[tuple[float, float, float]]:
    """The voxel centroid (z, y, x) of each nodule label of the ground truth."""
    import numpy as np
    from scipy import ndimage

    labels, n = ndimage.label(np.asarray(truth) > 0)
    return [tuple(float(v) for v in c) for c in ndimage.center_of_mass(labels > 0, labels, range(1, n + 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("docs/images"), help="folder of the PNGs")
    parser.add_argument("--epochs", type=int, default=12, help="training epochs in the Model widget")
    args = parser.parse_args(argv)
    args.images.mkdir(parents=True, exist_ok=True)

    import napari
    import torch

    from napari_wsnodule.widgets.edit_export import EditExportWidget
    from napari_wsnodule.widgets.flow.dock import FlowGuidanceWidget
    from napari_wsnodule.widgets.load import LoadWidget
    from napari_wsnodule.widgets.model.dock import ModelWidget
    from napari_wsnodule.widgets.nam import NamWidget
    from napari_wsnodule.widgets.pw4medseg.dock import Pw4MedSegWidget

    torch.set_num_threads(1)
    viewer = napari.Viewer(show=True, title="napari-wsnodule")
    viewer.window.resize(1500, 950)
    image, truth = viewer.open_sample("napari-wsnodule", "phantom")
    viewer.dims.set_point(0, viewer.dims.range[0].start + 22 * image.scale[0])
    docks = []

    def shoot(name: str, widget, title: str) -> None:
        for dock in docks:
            viewer.window.remove_dock_widget(dock)
        docks.clear()
        docks.append(viewer.window.add_dock_widget(widget, name=title, area="right"))
        _settle(1.0)
        path = args.images / f"plugin_{name}.png"
        viewer.window.screenshot(str(path), canvas_only=False)
        print(f"wrote {path}")

    load = LoadWidget(viewer)
    docks.append(viewer.window.add_dock_widget(load, name="Load", area="right"))
    load.window_layer.select(image)
    load.mediastinal_button.click()
    load.lung_button.click()
    shoot("load", load, "Load")

    model = ModelWidget(viewer)
    model.training.source_combo.setCurrentIndex(model.training.source_combo.findData("layers"))
    model.training.image_combo.select(image)
    model.training.labels_combo.select(truth)
    model.device.device_combo.setCurrentIndex(model.device.device_combo.findData("auto"))
    model.training.epochs_spin.setValue(args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        model.training.out_edit.setText(str(Path(tmp) / "phantom-run"))
        docks.append(viewer.window.add_dock_widget(model, name="Model", area="right"))
        model.training.train_button.click()
        run_until(lambda: not model.tasks.busy, 1800)
        if model.tasks.last_outcome != "done":
            raise SystemExit(f"training did not finish: {model.tasks.last_outcome}, {model.last_error_text}")
        shoot("model", model, "Model")

        nam = NamWidget(viewer)
        nam.image_combo.select(image)
        docks.append(viewer.window.add_dock_widget(nam, name="NAM", area="right"))
        nam.segment_button.click()
        run_until(lambda: not nam.tasks.busy and not nam.showing, 600)
        if nam.last_run is None:
            raise SystemExit(f"segmentation failed: {nam.last_error_text}")
        truth.visible = False
        for key in ("scope", "candidates", "coarse"):  # listed, not shown: one picture cannot hold all
            nam.last_layers[key].visible = False
        nam.last_layers["nam"].opacity = 0.45
        row = _chosen_row_on_a_nodule(nam.rnam_table, truth.data)
        if row is not None:
            nam.rnam_table.selectRow(row)  # shows that candidate's R-NAM and moves the viewer there
        shoot("nam", nam, "NAM")

        for layer in viewer.layers:
            layer.visible = layer is image or layer is nam.last_layers["fine"]
        edit = EditExportWidget(viewer)
        edit.labels_combo.select(nam.last_layers["fine"] if nam.last_run.result.n_nodules else truth)
        edit.labels_combo.layer().visible = True
        docks.append(viewer.window.add_dock_widget(edit, name="Nodules and export", area="right"))
        run_until(lambda: not edit.measuring, 120)
        if edit.nodule_table.rowCount():
            edit.nodule_table.selectRow(0)
        edit.export_path_edit.setText(str(Path.home() / "phantom-nodules.nii.gz"))
        shoot("edit_export", edit, "Nodules and export")

        for layer in viewer.layers:
            layer.visible = layer is image
        centres = _nodule_centres(truth.data)
        pw = Pw4MedSegWidget(viewer)
        pw.annotations.image_combo.select(image)
        docks.append(viewer.window.add_dock_widget(pw, name="PW4MedSeg", area="right"))
        points = pw.annotations.add_points_layer()
        points.add(centres)
        pw.pseudo_label.pseudo_button.click()
        run_until(lambda: not pw.tasks.busy and not pw.showing, 600)
        pw.training.epochs_spin.setValue(2)
        pw.training.steps_spin.setValue(10)
        pw.training.out_edit.setText(str(Path(tmp) / "pw4medseg-run"))
        pw.training.train_button.click()
        run_until(lambda: not pw.tasks.busy, 1800)
        pw.inference.passes_spin.setValue(2)
        pw.inference.infer_button.click()
        run_until(lambda: not pw.tasks.busy and not pw.showing, 1800)
        viewer.dims.set_point(0, image.data_to_world((int(centres[0][0]), 0, 0))[0])
        for layer in viewer.layers:  # a 20-step model is noise: show the pseudo-label it trained on
            layer.visible = layer is image or layer is points or layer.name.endswith("pseudo-label")
        shoot("pw4medseg", pw, "PW4MedSeg")

        prior, predictor = os.environ.get("WSNODULE_FLOW_PRIOR"), os.environ.get("WSNODULE_FLOW_PREDICTOR")
        if prior and predictor:
            for layer in viewer.layers:
                layer.visible = layer is image
            flow = FlowGuidanceWidget(viewer)
            flow.inputs.image_combo.select(image)
            docks.append(viewer.window.add_dock_widget(flow, name="Flow guidance", area="right"))
            flow.models.prior_edit.setText(prior)
            flow.models.prior_load_button.click()
            run_until(lambda: not flow.tasks.busy, 300)
            flow.models.predictor_edit.setText(predictor)
            flow.models.predictor_load_button.click()
            run_until(lambda: not flow.tasks.busy, 300)
            flow.inputs.points_combo.select(points)
            flow.run_button.click()
            run_until(lambda: not flow.tasks.busy and not flow.showing, 1800)
            if flow.last_error_text:
                raise SystemExit(f"flow guidance failed: {flow.last_error_text}")
            viewer.dims.set_point(0, image.data_to_world((int(centres[0][0]), 0, 0))[0])
            shoot("flow", flow, "Flow guidance")
        else:
            print("WSNODULE_FLOW_PRIOR / WSNODULE_FLOW_PREDICTOR not set: no flow guidance picture")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
