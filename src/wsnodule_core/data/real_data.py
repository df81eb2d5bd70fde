"""Where the real data is: ``$WSNODULE_DATA`` (see ``../shared/data/README.md`` for its layout)."""

from __future__ import annotations

import os
from pathlib import Path

from wsnodule_core.errors import DataNotAvailableError


def real_data_path(relative: str = "", *, instead: str = "give its path") -> Path:
    """``$WSNODULE_DATA/relative``; raises :class:`DataNotAvailableError` saying to set the variable or
    to ``instead`` (e.g. "give the VOI folder (--vois DIR)") when it is not set."""
    root = os.environ.get("WSNODULE_DATA")
    if not root:
        where = f" holding {relative}" if relative else ""
        raise DataNotAvailableError(f"WSNODULE_DATA is not set: point it at the folder{where}, or {instead}.")
    return Path(root) / relative if relative else Path(root)
