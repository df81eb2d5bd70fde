"""`wsnodule evaluate` refuses label and lung masks that are not on their image's grid."""

from __future__ import annotations

import pytest

from wsnodule_core.cli.main import main
from wsnodule_core.data.dataset import load_dataset
from wsnodule_core.io import read_volume, write_volume


def _shift(path, dx_mm: float) -> None:
    volume = read_volume(path)
    origin = (volume.origin[0] + dx_mm, *volume.origin[1:])
    shifted = type(volume)(volume.array, volume.spacing, origin, volume.direction)
    write_volume(shifted, path, overwrite=True)


@pytest.mark.parametrize("key", ["mask", "lungs"])
def test_evaluate_refuses_a_shifted_mask(tiny_dataset, nam_checkpoint, tmp_path, capsys, key):
    import shutil

    ds = tmp_path / "ds"
    shutil.copytree(tiny_dataset, ds)
    entry = load_dataset(ds).entries("test")[0]
    if not entry.get(key):
        pytest.skip(f"the phantom set has no {key} files")
    _shift(ds / entry[key], 50.0)
    out = tmp_path / "eval"
    assert main(["evaluate", str(ds), "--checkpoint", str(nam_checkpoint), "--out", str(out),
                 "--device", "cpu", "--quiet"]) == 1
    err = capsys.readouterr().err
    assert entry[key].split("/")[-1] in err and "origin" in err and "50" in err
    assert not (out / "metrics.json").exists()
