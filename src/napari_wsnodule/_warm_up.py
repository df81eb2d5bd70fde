"""One-off imports done in the background when a widget opens, so that no task or result pays them
on the main thread.

- torch: the first ``optimizer.step()`` of a process imports ``torch._dynamo`` (about 1 s on the
  project's 2-core machine), and parts of that import hold the GIL for 0.1-0.7 s: done inside a
  training task it froze the window mid-training.
- napari's first Labels layer imports pandas (its features table) and ``skimage.color`` and fills
  vispy's dash-pattern cache (the polygon tool's outline): 0.3-0.4 s that froze the window when the
  first result mask was added (docs/plugin.md, Responsiveness).

Started when a widget is built, they run while the user is still choosing settings.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

_torch_started = threading.Event()   # once per process: a second import is free anyway
_layers_started = threading.Event()


def warm_up_torch_in_background() -> None:
    """Start torch's one-off import in a daemon thread (no-op after the first call)."""
    _start_once(_torch_started, _import_torch, "wsnodule-torch-warm-up")


def warm_up_layers_in_background() -> None:
    """Start what napari's first Labels layer imports and caches, in a daemon thread (no-op after the
    first call)."""
    _start_once(_layers_started, _prepare_layers, "wsnodule-layers-warm-up")


def _start_once(started: threading.Event, work: Callable[[], None], name: str) -> None:
    if started.is_set():
        return
    started.set()
    threading.Thread(target=_quietly, args=(work,), name=name, daemon=True).start()


def _quietly(work: Callable[[], None]) -> None:
    try:
        work()
    except Exception:  # noqa: BLE001, S110 - a failed warm-up only means the first use pays for it
        pass


def _import_torch() -> None:
    import torch._dynamo  # noqa: F401 - the import is the point


def _prepare_layers() -> None:
    import pandas  # noqa: F401 - napari's layer features table
    import skimage.color  # noqa: F401 - napari's labels colours
    from vispy.visuals.line.dash_atlas import DashAtlas

    DashAtlas()  # its patterns are cached for the process (functools.lru_cache)
