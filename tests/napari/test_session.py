from napari_wsnodule._session import LoadedModel, PluginSession, session_for
from wsnodule_core.training.device import choose_device


def test_each_viewer_has_its_own_session(make_napari_viewer):
    a, b = make_napari_viewer(), make_napari_viewer()
    assert session_for(a) is session_for(a)
    assert session_for(a) is not session_for(b)


def test_adding_a_model_under_a_taken_name_keeps_both_and_signals():
    session = PluginSession()
    changes = []
    session.models_changed.connect(lambda: changes.append(1))
    device = choose_device("cpu")
    first = session.add_model(LoadedModel("run", "nam-multigap", object(), None, device))
    second = session.add_model(LoadedModel("run", "nam-multigap", object(), None, device))
    assert (first.name, second.name) == ("run", "run (2)")
    assert [m.name for m in session.models_of_kind("nam-multigap")] == ["run", "run (2)"]
    session.remove_model("run")
    assert list(session.models) == ["run (2)"] and len(changes) == 3


def test_lite_medsam_is_loaded_once_and_shared(monkeypatch):
    loads = []
    monkeypatch.setattr("wsnodule_core.foundation.load_lite_medsam",
                        lambda device: loads.append(device) or object())
    session = PluginSession()
    assert session.lite_medsam() is session.lite_medsam() and loads == ["auto"]
    assert PluginSession().lite_medsam() is not session.lite_medsam()  # another viewer, its own
