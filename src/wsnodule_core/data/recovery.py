"""Recovery files of a mask being edited: written while an annotator works, offered back after a crash.

One recovery per CT, named by the CT's identity (:func:`ct_identity`: its series, file, grid and a
sample of its voxels, so the same scan opened again finds it and another scan never does): a
``<identity>.nii.gz`` mask with the CT's geometry and a ``<identity>.json`` beside it (the layer's
name, the method that made the mask, the time saved). The folder is ``$WSNODULE_CACHE/recovery``
when set, else ``$XDG_CACHE_HOME/wsnodule/recovery`` (``~/.cache/wsnodule/recovery``); the files
are the user's own cache, replaced by each save and deleted after a successful export.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from wsnodule_core.errors import GeometryMismatchError, VolumeReadError
from wsnodule_core.io.volume import Volume, geometry_differences
from wsnodule_core.io.writers import write_atomically, write_mask

RECOVERY_SUFFIX = ".nii.gz"
_SAMPLE_STEPS = (4, 16, 16)  # the voxels hashed into the identity: cheap on a 512 x 512 x 600 scan


def default_recovery_dir() -> Path:
    """``$WSNODULE_CACHE/recovery``, else ``$XDG_CACHE_HOME/wsnodule/recovery`` (``~/.cache``)."""
    if os.environ.get("WSNODULE_CACHE"):
        return Path(os.environ["WSNODULE_CACHE"]) / "recovery"
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "wsnodule" / "recovery"


def ct_identity(ct: Volume) -> str:
    """A 24-hex-digit name of ``ct``: its series UID and source file, its grid, and a strided sample
    of its voxels (the same scan read again gives the same name)."""
    meta = ct.metadata
    digest = hashlib.sha256()
    for part in (meta.series_uid, meta.source_path, ct.shape, np.round(ct.spacing, 4), np.round(ct.origin, 3),
                 np.round(ct.direction, 4).ravel()):
        digest.update(repr(part if not isinstance(part, np.ndarray) else part.tolist()).encode())
        digest.update(b"\0")
    sample = np.ascontiguousarray(np.asarray(ct.array)[tuple(slice(None, None, s) for s in _SAMPLE_STEPS)])
    digest.update(str(sample.dtype).encode())
    digest.update(sample.tobytes())
    return digest.hexdigest()[:24]


@dataclass(frozen=True)
class Recovery:
    """A recovery file found for a CT: the mask file, its JSON, and what the JSON says."""

    path: Path
    info_path: Path
    layer_name: str
    source_method: str
    saved_at: float

    def age_text(self, now: float | None = None) -> str:
        """How long ago it was saved, e.g. ``"3 min ago"``."""
        seconds = max(0.0, (time.time() if now is None else now) - self.saved_at)
        if seconds < 90:
            return f"{seconds:.0f} s ago"
        if seconds < 90 * 60:
            return f"{seconds / 60:.0f} min ago"
        if seconds < 36 * 3600:
            return f"{seconds / 3600:.0f} h ago"
        return f"{seconds / 86400:.0f} days ago"


def recovery_paths(ct: Volume, folder: str | os.PathLike | None = None) -> tuple[Path, Path]:
    """``(mask file, JSON file)`` of ``ct``'s recovery in ``folder`` (default :func:`default_recovery_dir`)."""
    folder = Path(folder).expanduser() if folder is not None else default_recovery_dir()
    name = ct_identity(ct)
    return folder / f"{name}{RECOVERY_SUFFIX}", folder / f"{name}.json"


def write_recovery(mask: np.ndarray | Volume, ct: Volume, *, layer_name: str = "", source_method: str = "",
                   folder: str | os.PathLike | None = None) -> Path:
    """Save ``mask`` (on ``ct``'s grid) as ``ct``'s recovery, replacing the previous one; returns its path.

    The mask file is written first and the JSON last (both atomically), so a JSON always names a
    complete mask.
    """
    path, info_path = recovery_paths(ct, folder)
    write_mask(mask, ct, path, overwrite=True)
    info = {"layer_name": layer_name, "source_method": source_method, "saved_at": time.time(),
            "shape": list(ct.shape), "ct_source": ct.metadata.source_path}
    text = json.dumps(info, indent=1)
    write_atomically(info_path, True, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    return path


def find_recovery(ct: Volume, folder: str | os.PathLike | None = None) -> Recovery | None:
    """``ct``'s recovery, or None when there is none (or only a part of one)."""
    path, info_path = recovery_paths(ct, folder)
    if not (path.is_file() and info_path.is_file()):
        return None
    try:
        info = json.loads(info_path.read_text(encoding="utf-8"))
        return Recovery(path, info_path, str(info.get("layer_name", "")), str(info.get("source_method", "")),
                        float(info.get("saved_at", path.stat().st_mtime)))
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def read_recovery(recovery: Recovery, ct: Volume) -> Volume:
    """The recovered mask on ``ct``'s grid (refused when it does not lie there)."""
    from wsnodule_core.io.readers import read_volume

    try:
        mask = read_volume(recovery.path)
    except VolumeReadError as error:
        raise VolumeReadError(f"the recovery file {recovery.path} cannot be read ({error}); delete it.") from error
    found = geometry_differences(mask, ct)
    if found:
        raise GeometryMismatchError(f"the recovery file {recovery.path} is not on this CT's grid: "
                                    f"{'; '.join(found)}. Delete it.")
    return ct.with_array(np.asarray(mask.array))


def delete_recovery(ct: Volume, folder: str | os.PathLike | None = None) -> bool:
    """Remove ``ct``'s recovery files; True when there were any."""
    removed = False
    for path in reversed(recovery_paths(ct, folder)):  # the JSON first: a lone mask is never found
        try:
            path.unlink()
            removed = True
        except FileNotFoundError:
            pass
    return removed
