import numpy as np
import pytest
import torch

from classifiers.multicrop import multicrop_batch, scheme_boxes


@pytest.mark.parametrize("scheme", [1, 10, 144])
@pytest.mark.parametrize("shape", [(512, 256), (300, 450), (400, 400)])
def test_counts_and_boxes_inside(scheme, shape):
    width, height = shape
    boxes, flips = scheme_boxes(width, height, scheme)
    assert boxes.shape == (scheme, 4) and flips.shape == (scheme,)
    assert flips.sum() == (0 if scheme == 1 else scheme // 2)
    assert boxes[:, 0].min() >= -1e-3 and boxes[:, 1].min() >= -1e-3
    assert boxes[:, 2].max() <= width + 1e-3 and boxes[:, 3].max() <= height + 1e-3


def test_centre_crop_geometry():
    # 512x256: the shorter side is already 256, so the centre 224 crop is [144, 368) x [16, 240).
    boxes, _ = scheme_boxes(512, 256, 1)
    np.testing.assert_allclose(boxes, [[144, 16, 368, 240]])
    # 144 crops: the last unflipped crop of the first scale's centre square is that whole square.
    boxes, _ = scheme_boxes(512, 256, 144)
    np.testing.assert_allclose(boxes[11], [128, 0, 384, 256])  # 2nd square (centre), 6th crop
    # The whole-square crop covers the full shorter side at every scale, so it is the same region
    # at all 4 scales: the paper's 72 unmirrored crops hold 3 squares x 3 repeats = 9 duplicates.
    assert len(np.unique(np.round(boxes[:72]), axis=0)) == 72 - 9


def test_multicrop_batch_mirrors_and_shapes():
    image = np.zeros((64, 96, 3), np.uint8)
    image[:, :60] = 255  # white on the left
    crops = multicrop_batch([image, image], [np.array([0, 0, 96, 64]), np.array([8, 8, 48, 56])], 10, size=32)
    assert crops.shape == (20, 3, 32, 32)
    # Crop 4 is the centre crop of the whole image; crop 9 is its mirror.
    torch.testing.assert_close(crops[4].flip(-1), crops[9])
    # The second region lies inside the white part: every crop is uniform.
    assert crops[10:].std(dim=(0, 2, 3)).max() < 1e-4  # per channel (normalisation differs by channel)
