import pytest

from wsnodule_core.errors import CheckpointError, OutputExistsError
from wsnodule_core.training.checkpoint import load_checkpoint, save_checkpoint
from wsnodule_core.training.export import copy_checkpoint


def _checkpoint(tmp_path):
    return save_checkpoint(tmp_path / "run" / "best.pt", {"kind": "nam-multigap", "epoch": 3})


def test_copy_writes_an_identical_checkpoint_and_leaves_no_temp_file(tmp_path):
    source = _checkpoint(tmp_path)
    target = copy_checkpoint(source, tmp_path / "saved" / "model.pt")
    assert target == tmp_path / "saved" / "model.pt"
    assert target.read_bytes() == source.read_bytes() and load_checkpoint(target).epoch == 3
    assert sorted(p.name for p in target.parent.iterdir()) == ["model.pt"]


def test_a_run_folder_source_and_a_folder_target_use_the_file_name(tmp_path):
    _checkpoint(tmp_path)
    (tmp_path / "keep").mkdir()
    assert copy_checkpoint(tmp_path / "run", tmp_path / "keep") == tmp_path / "keep" / "best.pt"


def test_an_existing_file_is_never_overwritten_unless_asked(tmp_path):
    source = _checkpoint(tmp_path)
    target = tmp_path / "mine.pt"
    target.write_bytes(b"user data")
    with pytest.raises(OutputExistsError, match="already exists"):
        copy_checkpoint(source, target)
    assert target.read_bytes() == b"user data"
    with pytest.raises(OutputExistsError, match="the checkpoint itself"):
        copy_checkpoint(source, source, overwrite=True)
    copy_checkpoint(source, target, overwrite=True)
    assert target.read_bytes() == source.read_bytes()


def test_a_source_that_is_not_a_checkpoint_is_refused(tmp_path):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"no")
    with pytest.raises(CheckpointError):
        copy_checkpoint(junk, tmp_path / "out.pt")
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        copy_checkpoint(tmp_path / "missing.pt", tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
