"""The named NAM recipes: valid configs that build a model and match the segmentation crop."""

from dataclasses import replace

import pytest
import torch

from wsnodule_core.data.presets import SIZE_PRESETS
from wsnodule_core.errors import ModelConfigError, WsnoduleError
from wsnodule_core.nam.model import MultiGapClassifier
from wsnodule_core.nam.recipes import DataParams, NamRecipe, get_recipe, recipe_names
from wsnodule_core.data.slices import SliceConfig


def test_recipe_names_and_unknown_name():
    assert set(recipe_names()) >= {"cpu_demo", "gpu_paper"}
    with pytest.raises(WsnoduleError, match="cpu_demo"):
        get_recipe("no_such_recipe")


@pytest.mark.parametrize("name", ["cpu_demo", "gpu_paper"])
def test_recipe_crop_is_consistent(name):
    recipe = get_recipe(name)
    sc = recipe.slice_config()
    assert isinstance(sc, SliceConfig)
    assert sc.size == recipe.train.image_size == recipe.segment.input_size
    assert sc.pixel_spacing_mm == recipe.train.pixel_spacing_mm == recipe.segment.crop_pixel_spacing_mm
    assert sc.min_nodule_area_mm2 == recipe.train.min_nodule_area_mm2
    # the classifier and the segmenter use the same HU window
    assert tuple(sc.window) == tuple(recipe.segment.window)
    d = recipe.to_dict()
    assert d["name"] == name and d["train"]["image_size"] == sc.size


def test_cpu_demo_builds_a_narrow_model_with_maps():
    recipe = get_recipe("cpu_demo")
    cfg = recipe.train.model_config()
    assert (cfg.width, cfg.n_gap, cfg.batch_norm) == ("narrow", 1, True)
    model = MultiGapClassifier(cfg).eval()
    size = recipe.train.image_size
    with torch.no_grad():
        out = model.forward_with_maps(torch.rand(2, 1, size, size))
    assert out.logits.shape == (2, 2)
    # conv5_3 at stride 16
    assert out.nams[0].shape == (2, size // 16, size // 16)


def test_cpu_demo_data_grid_and_crop_cover_the_lungs():
    recipe = get_recipe("cpu_demo")
    kw = recipe.data.build_kwargs()
    assert kw["source"] == "phantom" and "size" not in kw
    assert kw["spacing"][0] == 2.5  # thin slices: a 10 mm nodule spans 4 slices
    # field of view of the crop (mm) >= the phantom lungs' width (~270 mm at 150 px x 1.8 mm)
    assert recipe.train.image_size * recipe.train.pixel_spacing_mm >= 270
    # a positive needs >= 30 mm2 of nodule = about 6 network pixels at 2.2 mm
    assert recipe.train.min_nodule_area_mm2 / recipe.train.pixel_spacing_mm ** 2 >= 5


def test_gpu_paper_has_the_papers_values():
    recipe = get_recipe("gpu_paper")
    t = recipe.train
    assert (t.width, t.n_gap, t.batch_size, t.image_size, t.pixel_spacing_mm) == ("vgg16", 1, 30, 384, None)
    assert t.backbone_lr == pytest.approx(1e-2) and t.new_layer_lr_factor == 10 and t.lr_decay == 0.99
    assert replace(t, n_gap=2, lr=None).backbone_lr == pytest.approx(2e-3)
    assert replace(t, n_gap=3, lr=None).backbone_lr == pytest.approx(1e-3)
    kw = recipe.data.build_kwargs()
    assert kw["size"] == "paper" and SIZE_PRESETS["paper"][0][1:] == (512, 512)
    cfg = t.model_config()
    assert cfg.width == "vgg16" and cfg.batch_norm is True  # no weights given: BN from scratch
    assert replace(t, vgg16_weights="vgg16.pth").model_config().batch_norm is False


def test_data_params_preset_vs_explicit_grid():
    assert DataParams(size="tiny").build_kwargs()["size"] == "tiny"
    kw = DataParams(shape=(8, 32, 32), spacing=(2.5, 2.0, 2.0)).build_kwargs()
    assert kw["shape"] == (8, 32, 32) and "size" not in kw


def test_with_train_keeps_crop_in_sync_and_mismatch_is_refused():
    recipe = get_recipe("cpu_demo").with_train(image_size=96, pixel_spacing_mm=3.0, epochs=1)
    assert (recipe.segment.input_size, recipe.segment.crop_pixel_spacing_mm) == (96, 3.0)
    assert recipe.train.epochs == 1
    with pytest.raises(ModelConfigError, match="crop"):
        NamRecipe("bad", "", recipe.data, recipe.train, replace(recipe.segment, input_size=64))
