import threading

from wsnodule_core.errors import TrainingDataError
from napari_wsnodule._tasks import TaskPanel, TaskReporter


def test_reporter_snapshots_progress_series_and_cancel():
    reporter = TaskReporter()
    reporter.progress(3, 10, "slices")
    cb = reporter.train_callbacks()
    cb.on_step(1, 5, 0.7)
    cb.on_epoch(1, {"val_balanced_accuracy": 0.6, "note": "x"})
    snap = reporter.snapshot()
    assert (snap.done, snap.total) == (1, 5) and "loss 0.700" in snap.message
    assert snap.series == {"loss": (0.7,), "val_balanced_accuracy": (0.6,)}
    assert not cb.should_stop()
    reporter.cancel()
    assert cb.should_stop() and reporter.cancelled()


def test_panel_runs_off_the_main_thread_and_hands_the_result_back_on_it(qtbot):
    panel = TaskPanel()
    qtbot.addWidget(panel)
    seen = {}

    def work(reporter):
        seen["worker_thread"] = threading.current_thread()
        reporter.progress(2, 4, "half way")
        return 42

    def on_result(value):
        seen["result"] = value
        seen["result_thread"] = threading.current_thread()

    panel.run("Adding", work, on_result)
    qtbot.waitUntil(lambda: not panel.busy, timeout=5000)
    assert seen["result"] == 42
    assert seen["worker_thread"] is not threading.main_thread()
    assert seen["result_thread"] is threading.main_thread()
    assert panel.last_outcome == "done" and "done" in panel.status.text()


def test_cancel_reaches_the_worker_and_is_reported_as_cancelled(qtbot):
    panel = TaskPanel()
    qtbot.addWidget(panel)
    started = threading.Event()
    results = []

    def work(reporter):
        started.set()
        while True:
            reporter.raise_if_cancelled()
            threading.Event().wait(0.01)

    panel.run("Looping", work, results.append)
    assert started.wait(5)
    assert panel.cancel_button.isEnabled()
    panel.cancel_button.click()
    qtbot.waitUntil(lambda: not panel.busy, timeout=5000)
    assert panel.last_outcome == "cancelled" and results == []
    assert "cancelled" in panel.status.text() and not panel.cancel_button.isEnabled()


def test_errors_become_notifications_with_the_message(qtbot, monkeypatch):
    shown = []
    monkeypatch.setattr("napari_wsnodule._tasks.show_error", shown.append)
    panel = TaskPanel()
    qtbot.addWidget(panel)

    def work(reporter):
        raise TrainingDataError("the mask has no labels; paint the nodule first.")

    panel.run("Training", work)
    qtbot.waitUntil(lambda: not panel.busy, timeout=5000)
    assert panel.last_outcome == "failed" and isinstance(panel.last_error, TrainingDataError)
    assert shown == ["Training failed: the mask has no labels; paint the nodule first."]


def test_a_second_task_is_refused_while_one_runs(qtbot, monkeypatch):
    infos = []
    monkeypatch.setattr("napari_wsnodule._tasks.show_info", infos.append)
    panel = TaskPanel()
    qtbot.addWidget(panel)
    release = threading.Event()
    panel.run("First", lambda reporter: release.wait(5))
    assert panel.run("Second", lambda reporter: 1) is None
    assert infos and "Second" in infos[0]
    release.set()
    qtbot.waitUntil(lambda: not panel.busy, timeout=5000)
