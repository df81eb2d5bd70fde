"""Copying a checkpoint to a place the user chose, atomically and never over an existing file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from wsnodule_core.errors import CheckpointError, OutputExistsError
from wsnodule_core.training.checkpoint import load_checkpoint


def copy_checkpoint(source: str | os.PathLike, destination: str | os.PathLike, *,
                    overwrite: bool = False) -> Path:
    """Copy the checkpoint ``source`` to ``destination`` and return the written path.

    ``source`` must be a readable wsnodule checkpoint (a run folder means its ``best.pt``, else
    ``last.pt``). A ``destination`` that is an existing folder receives the file under its own name.
    An existing file is refused unless ``overwrite``; the copy goes through a temporary file and a
    rename, so a failed copy never leaves half a checkpoint behind.
    """
    checkpoint = load_checkpoint(source)  # refuses what is not a wsnodule checkpoint
    src = checkpoint.path
    dst = Path(destination)
    if dst.is_dir():
        dst = dst / src.name
    if not dst.name:
        raise CheckpointError(f"{destination!s}: give a file name to save the checkpoint to.")
    if dst.exists():
        if dst.resolve() == src.resolve():
            raise OutputExistsError(f"{dst} is the checkpoint itself; choose another file to save a copy.")
        if not overwrite:
            raise OutputExistsError(f"{dst} already exists; choose another file name (nothing was overwritten).")
    dst.parent.mkdir(parents=True, exist_ok=True)
    temp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    try:
        shutil.copyfile(src, temp)
        os.replace(temp, dst)
    finally:
        if temp.exists():
            temp.unlink()
    return dst
