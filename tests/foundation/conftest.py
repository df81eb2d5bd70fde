"""LiteMedSAM for the foundation tests: loaded once, or a skip saying how to install it."""

from __future__ import annotations

import pytest

from wsnodule_core.errors import FoundationModelError


@pytest.fixture(scope="session")
def lite_medsam():
    from wsnodule_core.foundation import checkpoint_path, load_lite_medsam

    try:
        checkpoint_path()
    except FoundationModelError as error:
        pytest.skip(f"LiteMedSAM unavailable: {error}")
    return load_lite_medsam("cpu")
