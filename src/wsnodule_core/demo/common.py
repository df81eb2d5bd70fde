"""What both parts of the demo share: the progress callback's type, file names of rows, number text."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from wsnodule_core.errors import OutputExistsError

Progress = Callable[[str, int, int], None]
#: The training-free reference row of both parts.
BLOB_METHOD = "Hessian blob filter (no training)"


def stage_callback(progress: Progress | None, name: str) -> Callable[[int, int], None] | None:
    """``progress`` bound to one stage name (None without ``progress``)."""
    return (lambda done, total: progress(name, done, total)) if progress else None


def slug(row: str) -> str:
    """A table row as a file or folder name: ``"1-GAP Fine"`` -> ``"1-gap-fine"``."""
    return "".join(c if c.isalnum() else "-" for c in row.lower()).strip("-")


def fmt(value: Any) -> str:
    """Two decimals, ``-`` for a missing or non-finite value."""
    return "-" if value is None or not np.isfinite(value) else f"{value:.2f}"


def write_text(path: Path, text: str, overwrite: bool) -> Path:
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass overwrite=True (--overwrite) to replace it.")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path
