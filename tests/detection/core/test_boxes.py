import numpy as np
import pytest
import torch

from detection.core import boxes as B


def test_voc_round_trip_and_widths():
    # VOC xmin=1..xmax=10 covers 10 pixels: ours is [0, 10) with width 10, the devkit's xmax-xmin+1.
    voc = np.array([[1, 1, 10, 20]], np.float32)
    ours = B.voc_to_xyxy(voc)
    np.testing.assert_array_equal(ours, [[0, 0, 10, 20]])
    assert ours[0, 2] - ours[0, 0] == voc[0, 2] - voc[0, 0] + 1
    np.testing.assert_array_equal(B.xyxy_to_voc(ours), voc)


def test_coco_and_rcnn_conversions():
    ours = np.array([[5, 6, 15, 26]], np.float32)
    np.testing.assert_array_equal(B.xyxy_to_xywh(ours), [[5, 6, 10, 20]])
    np.testing.assert_array_equal(B.xywh_to_xyxy([[5, 6, 10, 20]]), ours)
    rcnn = B.xyxy_to_rcnn(ours)  # (y1, x1, y2, x2), 1-based inclusive
    np.testing.assert_array_equal(rcnn, [[7, 6, 26, 15]])
    np.testing.assert_array_equal(B.rcnn_to_xyxy(rcnn), ours)


def test_as_boxes_shapes():
    assert B.as_boxes([]).shape == (0, 4)
    with pytest.raises(ValueError):
        B.as_boxes([[1, 2, 3]])


def test_iou_numpy_matches_torchvision():
    rng = np.random.default_rng(0)
    a = rng.uniform(0, 50, (20, 2)); a = np.concatenate([a, a + rng.uniform(1, 30, (20, 2))], 1).astype(np.float32)
    b = rng.uniform(0, 50, (7, 2)); b = np.concatenate([b, b + rng.uniform(1, 30, (7, 2))], 1).astype(np.float32)
    expected = B.box_iou(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    np.testing.assert_allclose(B.box_iou_numpy(a, b), expected, rtol=1e-5, atol=1e-6)


def test_iou_exact_half_and_degenerate():
    iou = B.box_iou_numpy([[0, 0, 10, 10]], [[0, 0, 10, 5], [3, 3, 3, 3]])
    assert iou[0, 0] == 0.5
    assert iou[0, 1] == 0.0


def test_nms_and_batched_nms():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [50, 50, 60, 60]], np.float32)
    scores = np.array([0.9, 0.8, 0.7], np.float32)
    assert B.nms(boxes, scores, 0.3).tolist() == [0, 2]
    # The overlapping pair survives when the two boxes have different labels.
    assert sorted(B.batched_nms(boxes, scores, np.array([0, 1, 0]), 0.3).tolist()) == [0, 1, 2]


def test_clip_and_area():
    clipped = B.clip_boxes([[-5, -5, 20, 30]], width=10, height=12)
    np.testing.assert_array_equal(clipped, [[0, 0, 10, 12]])
    np.testing.assert_array_equal(B.box_area([[0, 0, 10, 12], [5, 5, 2, 2]]), [120, 0])
