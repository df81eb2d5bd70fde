"""PseudoLabelConfig(box_source="medsam"): LiteMedSAM's probability for a box as the pseudo-label."""

from __future__ import annotations

import numpy as np
import pytest

from wsnodule_core.errors import ModelConfigError
from wsnodule_core.pw4medseg.annotations import BoxAnnotation, SparseAnnotations
from wsnodule_core.pw4medseg.pseudo_labels import PseudoLabelConfig, pseudo_label

def test_box_source_is_checked():
    with pytest.raises(ModelConfigError, match="box_source"):
        PseudoLabelConfig(box_source="sam2")
    assert PseudoLabelConfig().box_source == "prior"


@pytest.mark.usefixtures("one_torch_thread")
def test_medsam_box_source_gives_the_sphere_on_the_volume_grid(lite_medsam, smooth_sphere_ct):
    volume, sphere = smooth_sphere_ct(origin=(5.0, -3.0, 40.0))
    zs, ys, xs = np.nonzero(sphere)
    box = BoxAnnotation((zs.min(), ys.min(), xs.min()), (zs.max(), ys.max(), xs.max()), nodule=1)
    annotations = SparseAnnotations(volume.shape, boxes=(box,))
    label = pseudo_label(volume, annotations, PseudoLabelConfig(box_source="medsam"),
                         model=lite_medsam)
    assert label.probability.shape == volume.shape and label.probability.dtype == np.float32
    probability, confidence = label.volumes()
    assert probability.spacing == volume.spacing and probability.origin == volume.origin
    assert 0 <= label.probability.min() and label.probability.max() <= 1
    mask = label.mask()
    dice = 2 * (mask & sphere).sum() / (mask.sum() + sphere.sum())
    assert dice > 0.7
    inside = label.confidence[mask]
    assert inside.mean() > 0.8  # |2p - 1|: sure inside, unsure only on the rim
