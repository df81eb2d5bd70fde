import importlib

import npe2
import pytest

MANIFEST = npe2.PluginManifest.from_distribution("napari-wsnodule")


def test_manifest_is_valid_and_names_the_plugin():
    assert MANIFEST.name == "napari-wsnodule"
    assert {w.display_name for w in MANIFEST.contributions.widgets} >= {"Load CT", "Model", "NAM / R-NAM",
                                                                       "Nodules and export"}


@pytest.mark.parametrize("command", MANIFEST.contributions.commands, ids=lambda c: c.id)
def test_every_command_points_at_something_importable(command):
    module, _, attribute = command.python_name.partition(":")
    assert callable(getattr(importlib.import_module(module), attribute))
