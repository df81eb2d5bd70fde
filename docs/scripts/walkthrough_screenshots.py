"""The walkthrough of docs/plugin.md, "Correct a weak mask on a real CT", driven through the real widgets.

Usage (from the repository root; LiteMedSAM installed; napari needs a screen, a virtual one will do)::

    xvfb-run -a -s "-screen 0 1600x1000x24" python docs/scripts/walkthrough_screenshots.py [--images docs/images]

Opens the shipped LIDC-IDRI-0001 crop (napari sample data), segments it with the default shipped model from
the Segment panel, lists the candidates in the Nodules and export panel (and shows the mediastinal window),
deletes the candidates that are not the nodule, redraws the nodule with one box prompt on its widest slice,
propagates it until it ends, undoes that (redo and undo again), propagates two slices each way, and exports
the merged label map and its CSV. Writes ``walkthrough_*.png`` and prints the figures the guide quotes
(candidates, Dice against the sample's reader label at each step, times) as JSON. The false positives are
told apart by their overlap with the reader label, and the box is that label's box on the slice grown by
3 px: the script's stand-ins for a person's eye and hand. Takes 10-15 minutes on a 2-core CPU (LiteMedSAM
encoder passes).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from _event_loop import run_until

from wsnodule_core.metrics import dice_3d

MAX_PNG_BYTES = 300_000
BOX_MARGIN_PX = 3
PROPAGATE_SLICES = 2


def _settle(seconds: float = 0.5) -> None:
    until = time.perf_counter() + seconds
    run_until(lambda: time.perf_counter() >= until, seconds + 10)


def save_png(rgba: np.ndarray, path: Path) -> int:
    """Save a screenshot, shrunk (and its colours reduced) until it is under MAX_PNG_BYTES."""
    from PIL import Image

    image = Image.fromarray(np.asarray(rgba)[..., :3])
    for scale, colours in ((1.0, None), (1.0, 256), (0.85, 256), (0.7, 256), (0.6, 128)):
        shown = image.resize((int(image.width * scale), int(image.height * scale)), Image.LANCZOS) \
            if scale < 1.0 else image
        if colours:
            shown = shown.quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
        buffer = io.BytesIO()
        shown.save(buffer, "PNG", optimize=True)
        if buffer.tell() <= MAX_PNG_BYTES:
            break
    path.write_bytes(buffer.getvalue())
    return buffer.tell()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=Path, default=Path("docs/images"), help="folder of the PNGs")
    args = parser.parse_args(argv)
    args.images.mkdir(parents=True, exist_ok=True)

    import torch

    import napari
    from napari_wsnodule.widgets.edit_export import EditExportWidget
    from napari_wsnodule.widgets.load import LoadWidget
    from napari_wsnodule.widgets.prompt import PromptWidget
    from napari_wsnodule.widgets.segment import SegmentWidget

    torch.set_num_threads(2)
    figures: dict = {}
    viewer = napari.Viewer(show=True, title="napari-wsnodule")
    viewer.window.resize(1500, 950)
    docks: list = []

    def dock(widget, title: str) -> None:
        for old in docks:
            viewer.window.remove_dock_widget(old)
        docks.clear()
        docks.append(viewer.window.add_dock_widget(widget, name=title, area="right"))

    def shoot(name: str) -> None:
        _settle(1.0)
        from napari._qt.dialogs.qt_notification import NapariQtNotification

        for toast in viewer.window._qt_window.findChildren(NapariQtNotification):
            toast.close()  # the Qt5 deprecation warning would cover the canvas
        _settle(0.3)
        path = args.images / f"walkthrough_{name}.png"
        size = save_png(viewer.window.screenshot(canvas_only=False, flash=False), path)
        print(f"wrote {path} ({size / 1000:.0f} kB)", flush=True)

    def show_slice(z: int) -> None:
        viewer.dims.set_point(0, ct.data_to_world((z, 0, 0))[0])

    # 1. open the sample
    ct, reader = viewer.open_sample("napari-wsnodule", "lidc")
    truth = np.asarray(reader.data) > 0
    reader.visible = False
    viewer.layers.selection.active = ct
    areas = truth.sum(axis=(1, 2))
    widest = int(areas.argmax())
    show_slice(widest)
    figures["ct"] = {"name": ct.name, "shape": list(ct.data.shape), "nodule_slices": [int(np.flatnonzero(areas)[0]),
                                                                                     int(np.flatnonzero(areas)[-1])],
                     "widest_slice": widest}

    # 2. segment with the default shipped model
    segment = SegmentWidget(viewer)
    dock(segment, "Segment (shipped models)")
    segment.image_combo.select(ct)
    figures["model"] = segment.selected_model().name
    shoot("open")
    t0 = time.perf_counter()
    segment.run_button.click()
    run_until(lambda: not segment.tasks.busy and not segment._staged.busy, 3600)
    if segment.last_run is None:
        raise SystemExit(f"segmentation failed: {segment.last_error_text} {segment.tasks.last_error}")
    figures["segment_s"] = round(time.perf_counter() - t0, 1)
    mask = segment.last_layers["mask"]
    model_mask = np.array(mask.data, copy=True)
    candidates = [int(v) for v in np.unique(model_mask) if v]
    on_nodule = [v for v in candidates if (truth & (model_mask == v)).any()]
    figures["candidates"] = len(candidates)
    figures["candidates_on_nodule"] = len(on_nodule)
    figures["dice_model_all"] = round(dice_3d(model_mask, truth), 3)
    figures["dice_model_nodule"] = round(dice_3d(np.isin(model_mask, on_nodule), truth), 3)
    shoot("segment")

    # 3. look at what it found: the nodule table, the mediastinal window
    edit = EditExportWidget(viewer)
    edit.nodule_table.setMinimumHeight(200)  # the picture shows a few rows (a user drags the panel taller)
    dock(edit, "Nodules and export")
    edit.labels_combo.select(mask)
    edit.image_combo.select(ct)
    run_until(lambda: not edit.measuring, 300)
    figures["table_rows"] = edit.nodule_table.rowCount()
    load = LoadWidget(viewer)
    load.window_layer.select(ct)
    load.mediastinal_button.click()
    biggest = max(range(len(edit.measurements)), key=lambda i: edit.measurements[i].volume_mm3)
    figures["largest_candidate"] = {"longest_axial_mm": round(edit.measurements[biggest].longest_axial_diameter_mm, 1),
                                    "volume_mm3": round(edit.measurements[biggest].volume_mm3, 1)}
    for r in range(edit.nodule_table.rowCount()):
        if int(edit.nodule_table.item(r, 0).text()) == edit.measurements[biggest].index:
            edit.nodule_table.selectRow(r)
    shoot("nodules")
    load.lung_button.click()

    # 4. delete the false positives (one undoable step each) from the Prompt correction panel
    prompt = PromptWidget(viewer)
    dock(prompt, "Prompt correction (LiteMedSAM)")
    prompt.image_combo.select(ct)
    prompt.labels_combo.select(mask)
    for value in candidates:
        if value not in on_nodule:
            mask.selected_label = value
            prompt.delete_button.click()
    figures["deleted"] = len(candidates) - len(on_nodule)
    figures["dice_after_deleting"] = round(dice_3d(mask.data, truth), 3)

    # 5. one box on the nodule's widest slice; the readers' label as an outline to compare with
    reader.contour = 1
    reader.visible = True
    show_slice(widest)
    boxes = prompt.use_boxes()
    run_until(lambda: not prompt.tasks.busy, 600)
    ys, xs = np.nonzero(truth[widest])
    y0, x0 = max(ys.min() - BOX_MARGIN_PX, 0), max(xs.min() - BOX_MARGIN_PX, 0)
    y1, x1 = ys.max() + 1 + BOX_MARGIN_PX, xs.max() + 1 + BOX_MARGIN_PX
    corners = np.array([[widest, y0, x0], [widest, y0, x1], [widest, y1, x1], [widest, y1, x0]], float)
    before_box = np.array(mask.data, copy=True)
    t0 = time.perf_counter()
    boxes.add_rectangles(corners)  # as drawing it with the mouse does: the box prompts its slice
    run_until(lambda: not prompt.tasks.busy, 600)
    figures["box_s"] = round(time.perf_counter() - t0, 1)
    figures["box_latency"] = prompt.latency_label.text()
    figures["slice_dice_before_box"] = round(dice_3d(before_box[widest], truth[widest]), 3)
    figures["slice_dice_after_box"] = round(dice_3d(mask.data[widest], truth[widest]), 3)
    figures["dice_after_box"] = round(dice_3d(mask.data, truth), 3)
    shoot("box")

    # 6. propagate both ways until it ends, compare, undo it
    run_until(lambda: not prompt.prewarming, 600)
    before = np.array(mask.data, copy=True)
    t0 = time.perf_counter()
    prompt.propagate_button.click()
    run_until(lambda: not prompt.tasks.busy, 1200)
    figures["propagate_s"] = round(time.perf_counter() - t0, 1)
    figures["propagated"] = prompt.latency_label.text()
    figures["dice_after_propagation"] = round(dice_3d(mask.data, truth), 3)
    after = np.array(mask.data, copy=True)
    per_slice = {z: [round(dice_3d(before[z], truth[z]), 3), round(dice_3d(after[z], truth[z]), 3)]
                 for z in range(after.shape[0]) if (before[z] != after[z]).any()}
    figures["propagation_slice_dice_before_after"] = per_slice
    worst = min(per_slice, key=lambda z: per_slice[z][1] - per_slice[z][0]) if per_slice else widest
    figures["shown_slice"] = worst
    run_until(lambda: not prompt.prewarming, 600)
    boxes.visible = False
    show_slice(worst)
    shoot("propagate")
    undo_tip = prompt.undo_button.toolTip()
    prompt.undo_button.click()
    undone = np.array(mask.data, copy=True)
    prompt.redo_button.click()
    figures["redo_restores"] = bool(np.array_equal(mask.data, after))
    prompt.undo_button.click()
    figures["undo"] = {"tooltip": undo_tip, "dice_after_undo": round(dice_3d(mask.data, truth), 3),
                       "voxels_changed": int(np.count_nonzero(undone != after)),
                       "back_to_before": bool(np.array_equal(mask.data, before))}

    # ... and propagate again, two slices each way (where the comparison showed it helps): cached slices
    prompt.slices_spin.setValue(PROPAGATE_SLICES)
    t0 = time.perf_counter()
    prompt.propagate_button.click()
    run_until(lambda: not prompt.tasks.busy, 1200)
    figures["short_propagation"] = {"slices": PROPAGATE_SLICES, "s": round(time.perf_counter() - t0, 1),
                                    "text": prompt.latency_label.text(),
                                    "dice": round(dice_3d(mask.data, truth), 3)}
    run_until(lambda: not prompt.prewarming, 600)
    reader.visible = False

    # 7. export the merged label map and the CSV
    dock(edit, "Nodules and export")
    with tempfile.TemporaryDirectory() as tmp:
        edit.export_path_edit.setText(str(Path(tmp) / "LIDC-IDRI-0001-nodules.nii.gz"))
        run_until(lambda: not edit.measuring, 300)
        edit.export_button.click()
        run_until(lambda: not edit.tasks.busy, 300)
        if edit.last_export is None:
            raise SystemExit(f"export failed: {edit.last_error_text} {edit.tasks.last_error}")
        from wsnodule_core.io import read_volume

        exported = read_volume(edit.last_export)
        figures["dice_exported"] = round(dice_3d(exported.array, truth), 3)
        with edit.last_table.open() as handle:
            figures["csv"] = list(csv.DictReader(handle))
        if edit.nodule_table.rowCount():
            edit.nodule_table.selectRow(0)
        edit.export_path_edit.setText("~/LIDC-IDRI-0001-nodules.nii.gz")  # what a user would type
        show_slice(widest)
        shoot("export")
    print(json.dumps(figures, indent=1))
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
