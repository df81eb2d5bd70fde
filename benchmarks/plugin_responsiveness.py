"""How long the napari window freezes while the plugin trains and segments.

Opens the phantom sample in a shown viewer, trains the NAM classifier from the Model widget on the
open CT and its labels, cancels a second training run, then segments from the NAM widget (at the
checkpoint's threshold, and with every slice segmented: the worst case). A 10 ms timer on the main
thread measures the event loop's longest stall in each phase; the target is under 100 ms.

Needs a screen: ``xvfb-run -a python benchmarks/plugin_responsiveness.py`` (results in docs/plugin.md).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

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
    args = parser.parse_args(argv)

    import napari
    import torch

    from napari_wsnodule.widgets.model.dock import ModelWidget
    from napari_wsnodule.widgets.nam import NamWidget

    torch.set_num_threads(args.threads)
    viewer = napari.Viewer(show=True)
    image, labels = viewer.open_sample("napari-wsnodule", "phantom")
    print(f"phantom sample {image.data.shape}, torch threads {args.threads}, {args.epochs} epochs")
    meter = StallMeter()
    rows = []

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

    nam_widget = NamWidget(viewer)
    viewer.window.add_dock_widget(nam_widget, name="NAM")
    nam_widget.image_combo.select(image)
    nam_widget.tasks.task_finished.connect(lambda outcome: setattr(meter, "phase", "showing"))
    for label, threshold in (("checkpoint threshold", None), ("every slice (threshold 0)", 0.0)):
        if threshold is not None:
            nam_widget.threshold_spin.setValue(threshold)
        meter.start("computing")
        nam_widget.segment_button.click()
        compute_s = run_until(lambda: not nam_widget.tasks.busy, 900)  # then the phase is "showing"
        show_s = run_until(lambda: not nam_widget.showing, 120)
        meter.stop()
        assert nam_widget.last_run is not None, nam_widget.last_error_text
        n_slices = len(nam_widget.last_run.result.slices)
        rows.append(_row(f"segmentation, {label}: computing ({n_slices} nodule slices)", compute_s,
                         meter.summary("computing")))
        rows.append(_row(f"segmentation, {label}: adding the result layers", show_s, meter.summary("showing")))

    print("| phase | seconds | longest stall (ms) | 99th percentile (ms) | stalls > 100 ms | ticks |")
    print("|---|---:|---:|---:|---:|---:|")
    print("\n".join(rows))
    print(f"Cancel took effect after {cancel_latency:.2f} s")
    viewer.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
