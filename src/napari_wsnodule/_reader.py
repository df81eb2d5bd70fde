"""npe2 reader: DICOM series folders, NIfTI, MetaImage and NRRD, opened with their geometry."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from wsnodule_core.io import read_volume
from wsnodule_core.io.volume import Volume
from napari_wsnodule._geometry import layer_geometry

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mhd", ".nrrd", ".nhdr")
LUNG_WINDOW = (-1350.0, 150.0)  # level -600 HU, width 1500 HU

LayerData = tuple[Any, dict[str, Any], str]


def _is_volume_path(path: Path) -> bool:
    return path.is_dir() or any(path.name.lower().endswith(s) for s in VOLUME_SUFFIXES)


def get_reader(path: str | list[str]) -> Callable[[str | list[str]], list[LayerData]] | None:
    """Return :func:`read_layers` when ``path`` looks like a volume wsnodule reads, else None."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths or not all(_is_volume_path(Path(p)) for p in paths):
        return None
    return read_layers


def volume_layer_data(volume: Volume, name: str) -> LayerData:
    """An image layer for a CT volume: lung window, geometry kept, the Volume in the layer's metadata."""
    kwargs: dict[str, Any] = {"name": name, "metadata": {"wsnodule_volume": volume}, **layer_geometry(volume)}
    if volume.metadata.is_ct:
        kwargs["contrast_limits"] = LUNG_WINDOW
    return (volume.array, kwargs, "image")


def read_layers(path: str | list[str]) -> list[LayerData]:
    paths = [path] if isinstance(path, str) else list(path)
    layers = []
    for p in paths:
        volume = read_volume(p)
        name = Path(p).name
        for suffix in VOLUME_SUFFIXES:
            if name.lower().endswith(suffix):
                name = name[: -len(suffix)]
        layers.append(volume_layer_data(volume, name))
    return layers
