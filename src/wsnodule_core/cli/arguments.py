"""Argument parsing shared by several ``wsnodule`` subcommands."""

from __future__ import annotations

from pathlib import Path


def parse_checkpoint(text: str) -> tuple[str | None, Path]:
    """``"NAME=path"`` -> ``("NAME", path)``; a plain path (even one holding '=') -> ``(None, path)``."""
    if "=" in text and not Path(text).exists():
        name, _, path = text.partition("=")
        if name.strip() and path:
            return name.strip(), Path(path)
    return None, Path(text)
