"""Import torch's lazily loaded optimiser machinery in the background when a training widget opens.

The first ``optimizer.step()`` of a process imports ``torch._dynamo`` (about 1 s on the project's
2-core machine), and parts of that import hold the GIL for 0.1-0.7 s: done inside a training task it
froze the window mid-training. Started when the widget is built, it runs while the user is still
choosing settings.
"""

from __future__ import annotations

import threading

_started = threading.Event()  # once per process: a second import is free anyway


def warm_up_torch_in_background() -> None:
    """Start the one-off import in a daemon thread (no-op after the first call)."""
    if _started.is_set():
        return
    _started.set()
    threading.Thread(target=_import, name="wsnodule-torch-warm-up", daemon=True).start()


def _import() -> None:
    try:
        import torch._dynamo  # noqa: F401 - the import is the point
    except Exception:  # noqa: BLE001 - a failed warm-up only means the first step pays for it
        pass
