"""How long the napari window freezes while the plugin trains and segments.

First adds one mask to the real sample CT 3 s after a plugin panel opened (the session's first Labels
layer: napari's one-off imports). Then it opens the phantom sample in a shown viewer, trains the NAM classifier from the Model widget on the
open CT and its labels, cancels a second training run, then segments from the NAM widget (at the
checkpoint's threshold, and with every slice segmented: the worst case). Then it opens the shipped real
sample (LIDC-IDRI-0001 crop, 38 x 282 x 340) and segments it from the NAM widget with the same
phantom-trained model (every slice, without the lung crop: the point is the plugin's work on a real-size
CT, not the mask's quality), and moves through 10 slices (one redraw each: the floor of any stall).
A 10 ms timer on the main thread measures the event loop's longest stall in each phase; the target
is under 100 ms.

Needs a screen: ``xvfb-run -a python benchmarks/plugin_responsiveness.py`` (results in docs/plugin.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _event_loop import StallMeter, run_until  # noqa: E402


def _row(name: str, seconds: float, summary: dict) -> str:
    return (f"| {name} | {seconds:.1f} | {summary['max_ms']:.0f} | {summary['p99_ms']:.0f} | "
            f"{summary['over_100ms']} | {summary['ticks']} |")


def _settle(seconds: float) -> None:
    """Let the event loop run for ``seconds``."""
    until = time.perf_counter() + seconds
    run_until(lambda: time.perf_counter() >= until, seconds + 10)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3, help="training epochs (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads of the worker (default 1)")
    parser.add_argument("--gc-log", action="store_true",
                        help="print how long each full (generation 2) garbage collection took")
    args = parser.parse_args(argv)

    import napari
    import torch
    from qtpy.QtCore import QTimer

    from napari_wsnodule.widgets.model.dock import ModelWidget
    from napari_wsnodule.widgets.nam import NamWidget

    torch.set_num_threads(args.threads)
    viewer = napari.Viewer(show=True)
    meter = StallMeter()
    if args.gc_log:
        _log_full_collections(meter)
    nam_widget = NamWidget(viewer)
    viewer.window.add_dock_widget(nam_widget, name="NAM")
    rows = [_first_mask(viewer, meter)]
    image, labels = viewer.open_sample("napari-wsnodule", "phantom")
    print(f"phantom sample {image.data.shape}, torch threads {args.threads}, {args.epochs} epochs")

    meter.start("opening the Model widget")
    opened = time.perf_counter()
    model_widget = ModelWidget(viewer)
    viewer.window.add_dock_widget(model_widget, name="Model")
    model_widget.training.source_combo.setCurrentIndex(model_widget.training.source_combo.findData("layers"))
    model_widget.training.image_combo.select(image)
    model_widget.training.labels_combo.select(labels)
    model_widget.device.device_combo.setCurrentIndex(model_widget.device.device_combo.findData("cpu"))
    model_widget.training.epochs_spin.setValue(args.epochs)
    with tempfile.TemporaryDirectory() as tmp:
        model_widget.training.out_edit.setText(str(Path(tmp) / "run"))
        _settle(5.0)  # the user picks the settings while torch's warm-up import runs
        meter.stop()
        rows.append(_row("opening the Model widget, then 5 s idle (torch warm-up import)",
                         time.perf_counter() - opened, meter.summary()))
        meter.start("training")
        model_widget.training.train_button.click()
        seconds = run_until(lambda: not model_widget.tasks.busy, 900)
        meter.stop()
        assert model_widget.tasks.last_outcome == "done", model_widget.tasks.last_outcome
        rows.append(_row(f"training, {args.epochs} epochs (Model widget)", seconds, meter.summary()))

        model_widget.training.out_edit.setText(str(Path(tmp) / "cancelled"))
        meter.start("training, cancelled")
        model_widget.training.train_button.click()
        started = time.perf_counter()
        _settle(4.0)
        cancel_at = time.perf_counter()
        model_widget.tasks.cancel()
        run_until(lambda: not model_widget.tasks.busy, 120)
        cancel_latency = time.perf_counter() - cancel_at
        meter.stop()
        rows.append(_row("training, Cancel after 4 s", time.perf_counter() - started, meter.summary()))

    nam_widget.image_combo.select(image)
    nam_widget.tasks.task_finished.connect(lambda outcome: setattr(meter, "phase", "showing"))
    for label, threshold in (("checkpoint threshold", None), ("every slice (threshold 0)", 0.0)):
        if threshold is not None:
            nam_widget.threshold_spin.setValue(threshold)
        rows += _segment(nam_widget, meter, f"segmentation, {label}")

    meter.start("opening the real sample")
    opened = time.perf_counter()
    sample: list = []  # opened from the event loop, so the meter sees the stall it causes
    QTimer.singleShot(100, lambda: sample.extend(viewer.open_sample("napari-wsnodule", "lidc")))
    run_until(lambda: bool(sample), 60)
    real_ct = sample[0]
    _settle(1.0)
    meter.stop()
    rows.append(_row(f"real sample {real_ct.data.shape}: opening it (CT + reader label), then 1 s",
                     time.perf_counter() - opened, meter.summary()))
    nam_widget.image_combo.select(real_ct)
    nam_widget.lungs_check.setChecked(False)  # a 38-slice crop: no whole lungs to find
    rows += _segment(nam_widget, meter, "real sample, every slice (threshold 0)")
    rows.append(_scroll(viewer, meter))

    print("| phase | seconds | longest stall (ms) | 99th percentile (ms) | stalls > 100 ms | ticks |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f"Cancel took effect after {cancel_latency:.2f} s")
    viewer.close()
    return 0


def _log_full_collections(meter: StallMeter) -> None:
    """Print each full garbage collection's duration and the phase it fell in (it holds the GIL)."""
    import gc

    started: list[float] = []

    def callback(phase: str, info: dict) -> None:
        if info.get("generation") != 2:
            return
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            print(f"full garbage collection: {1000 * (time.perf_counter() - started.pop()):.0f} ms "
                  f"(phase: {meter.phase})", flush=True)

    gc.callbacks.append(callback)


def _first_mask(viewer: Any, meter: StallMeter) -> str:
    """The session's first Labels layer (napari's one-off imports and caches), added to the real CT
    3 s after a plugin panel opened; both layers are removed afterwards."""
    from qtpy.QtCore import QTimer

    from napari_wsnodule._layers import add_volume_layer
    from wsnodule_core.data.sample import load_lidc_sample

    sample = load_lidc_sample()
    ct = add_volume_layer(viewer, sample.ct, "image", "real CT", contrast_limits=(-1350.0, 150.0))
    _settle(3.0)  # the user looks at the panel
    meter.start("first mask")
    started = time.perf_counter()
    added: list = []
    QTimer.singleShot(100, lambda: added.append(add_volume_layer(viewer, sample.label, "labels", "first mask",
                                                                 source=ct, generated="benchmark")))
    run_until(lambda: bool(added), 60)
    _settle(0.5)
    meter.stop()
    row = _row("first mask of the session (real CT shown, a panel open for 3 s)", time.perf_counter() - started,
               meter.summary())
    viewer.layers.remove(added[0])
    viewer.layers.remove(ct)
    return row


def _scroll(viewer: Any, meter: StallMeter, n_slices: int = 10) -> str:
    """The floor: moving to the next slice every 0.2 s (what an annotator does all the time), with the
    real CT and the results shown; each move is one canvas redraw."""
    from qtpy.QtCore import QTimer

    z0 = int(viewer.dims.current_step[0])
    meter.start("scrolling")
    started = time.perf_counter()
    for i in range(1, n_slices + 1):
        QTimer.singleShot(200 * i, lambda i=i: viewer.dims.set_current_step(0, z0 + (i if z0 < 10 else -i)))
    _settle(0.2 * n_slices + 0.3)
    meter.stop()
    return _row(f"real sample with its results: {n_slices} slice changes, one every 0.2 s (the redraw floor)",
                time.perf_counter() - started, meter.summary())


def _segment(nam_widget: Any, meter: StallMeter, label: str) -> list[str]:
    """Segment from the NAM widget: its computing and its result-adding rows."""
    previous = nam_widget.last_run
    meter.start("computing")
    nam_widget.segment_button.click()
    compute_s = run_until(lambda: not nam_widget.tasks.busy, 900)  # then the phase is "showing"
    show_s = run_until(lambda: not nam_widget.showing, 120)
    meter.stop()
    assert nam_widget.last_run is not None and nam_widget.last_run is not previous, nam_widget.last_error_text
    n_slices = len(nam_widget.last_run.result.slices)
    return [_row(f"{label}: computing ({n_slices} nodule slices)", compute_s, meter.summary("computing")),
            _row(f"{label}: adding the result layers", show_s, meter.summary("showing"))]

if __name__ == "__main__":
    raise SystemExit(main())
