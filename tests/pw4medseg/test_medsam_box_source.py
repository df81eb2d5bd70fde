"""PseudoLabelConfig(box_source="medsam"): LiteMedSAM's probability for a box as the pseudo-label."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from wsnodule_core.errors import FoundationModelError, ModelConfigError
from wsnodule_core.foundation import checkpoint_path
from wsnodule_core.io.volume import Volume
from wsnodule_core.pw4medseg.annotations import BoxAnnotation, SparseAnnotations
from wsnodule_core.pw4medseg.pseudo_labels import PseudoLabelConfig, pseudo_label

SPACING = (2.5, 0.7, 0.7)


def _missing() -> str | None:
    try:
        checkpoint_path()
    except FoundationModelError as error:
        return str(error)
    return None


MISSING = _missing()


def sphere_ct(radius_mm: float = 6.0, shape: tuple[int, int, int] = (9, 64, 64)) -> tuple[Volume, np.ndarray]:
    grids = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * s for n, s in zip(shape, SPACING)], indexing="ij")
    sphere = sum(g ** 2 for g in grids) <= radius_mm ** 2
    texture = ndimage.gaussian_filter(np.random.default_rng(1).normal(0, 1, shape), (0, 2, 2))
    image = np.where(sphere, 50.0, -850.0 + 60.0 * texture / texture.std())
    return Volume(image.astype(np.float32), SPACING, origin=(5.0, -3.0, 40.0)), sphere


def test_box_source_is_checked():
    with pytest.raises(ModelConfigError, match="box_source"):
        PseudoLabelConfig(box_source="sam2")
    assert PseudoLabelConfig().box_source == "prior"


@pytest.mark.skipif(MISSING is not None, reason=f"LiteMedSAM not installed: {MISSING}")
@pytest.mark.usefixtures("one_torch_thread")
def test_medsam_box_source_gives_the_sphere_on_the_volume_grid():
    from wsnodule_core.foundation import load_lite_medsam

    volume, sphere = sphere_ct()
    zs, ys, xs = np.nonzero(sphere)
    box = BoxAnnotation((zs.min(), ys.min(), xs.min()), (zs.max(), ys.max(), xs.max()), nodule=1)
    annotations = SparseAnnotations(volume.shape, boxes=(box,))
    label = pseudo_label(volume, annotations, PseudoLabelConfig(box_source="medsam"),
                         model=load_lite_medsam("cpu"))
    assert label.probability.shape == volume.shape and label.probability.dtype == np.float32
    probability, confidence = label.volumes()
    assert probability.spacing == volume.spacing and probability.origin == volume.origin
    assert 0 <= label.probability.min() and label.probability.max() <= 1
    mask = label.mask()
    dice = 2 * (mask & sphere).sum() / (mask.sum() + sphere.sum())
    assert dice > 0.7
    inside = label.confidence[mask]
    assert inside.mean() > 0.8  # |2p - 1|: sure inside, unsure only on the rim
