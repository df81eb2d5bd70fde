"""Shared fixtures of the GUI tests."""

from __future__ import annotations

import pytest

from napari_wsnodule._layers import add_volume_layer


@pytest.fixture
def sphere_viewer(make_napari_viewer, smooth_sphere_ct, monkeypatch, tmp_path):
    """A viewer showing an 11-slice smooth sphere CT as layer "ct", with the embedding cache in tmp_path
    and every error the widgets show collected -> (viewer, image layer, CT volume, sphere mask, errors)."""
    monkeypatch.setenv("WSNODULE_CACHE", str(tmp_path / "cache"))
    shown: list[str] = []
    for where in ("napari_wsnodule.widgets._base.show_error", "napari_wsnodule._tasks.show_error"):
        monkeypatch.setattr(where, shown.append)
    volume, truth = smooth_sphere_ct(radius_mm=6.0, shape=(11, 64, 64))
    viewer = make_napari_viewer()
    image = add_volume_layer(viewer, volume, "image", "ct")
    return viewer, image, volume, truth, shown
