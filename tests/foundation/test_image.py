"""A CT slice as LiteMedSAM's input: window, square pixels, letterbox, and the way back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsnodule_core.errors import InvalidVolumeError
from wsnodule_core.foundation import MEDSAM_WINDOW, to_model_image


def test_anisotropic_pixels_become_square_and_the_longer_side_fills_the_input():
    slice_hu = np.full((40, 80), -850.0)
    slice_hu[10:20, 20:30] = 40.0
    image, letterbox = to_model_image(slice_hu, (1.4, 0.7))  # 56 mm x 56 mm: a square picture
    assert image.shape == (3, 256, 256) and letterbox.content == (256, 256)
    assert torch.equal(image[0], image[1]) and torch.equal(image[0], image[2])
    assert float(image.min()) == 0.0 and float(image.max()) == 1.0  # MedSAM's own min-max scaling
    bright = torch.nonzero(image[0] > 0.5).float()
    assert np.allclose(bright.min(0).values.numpy(), [64, 64], atol=3)  # row 10 x 1.4 mm = col 20 x 0.7 mm = 14 mm
    assert np.allclose(bright.max(0).values.numpy(), [127, 95], atol=3)  # 28 mm and 21 mm: 128 and 96 px


def test_a_wide_slice_is_padded_at_the_bottom_and_boxes_and_masks_map_both_ways():
    image, letterbox = to_model_image(np.linspace(-1200, 400, 40 * 80).reshape(40, 80), (1.0, 1.0))
    assert letterbox.content == (128, 256) and float(image[:, 128:].abs().max()) == 0.0
    assert np.allclose(letterbox.box_to_input((10, 20, 20, 40)), [64, 32, 128, 64])
    logits = torch.full((256, 256), -5.0)
    logits[32:64, 64:128] = 5.0  # input rows 32-63, columns 64-127 = slice rows 10-19, columns 20-39
    mask = letterbox.mask_from_logits(logits)
    assert mask.shape == (40, 80)
    rows, cols = np.nonzero(mask)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (10, 19, 20, 39)


def test_the_window_clips_hu_before_scaling():
    low, high = MEDSAM_WINDOW
    slice_hu = np.array([[low - 500, low], [high, high + 900]], float)
    image, _ = to_model_image(np.kron(slice_hu, np.ones((8, 8))), (1.0, 1.0))
    assert float(image[0, 0, 0]) == float(image[0, 0, 127]) == 0.0  # below the window = its bottom
    assert float(image[0, 255, 0]) == float(image[0, 255, 255]) == 1.0


def test_bad_slices_are_refused():
    with pytest.raises(InvalidVolumeError, match="2D array"):
        to_model_image(np.zeros((2, 3, 4)))
    with pytest.raises(InvalidVolumeError, match="positive"):
        to_model_image(np.zeros((3, 4)), (0.0, 1.0))
