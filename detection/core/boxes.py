"""Box conventions and the few box operations the whole project shares.

Inside the project a box is float32 ``(x1, y1, x2, y2)`` in absolute pixels, 0-based and
continuous: a box covering pixel columns 0..9 inclusive is ``x1=0, x2=10`` and its width is
``x2 - x1 = 10``. Arrays of boxes have shape ``(N, 4)``.

Conversions to other conventions happen only at file boundaries, through this module:

- VOC / ILSVRC XML: 1-based inclusive pixel indices. ``xmin=1, xmax=10`` covers 10 pixels, which
  we read as ``x1 = xmin - 1 = 0, x2 = xmax = 10``. The devkits' ``+1`` widths then equal ours,
  so every protocol runs on the same numbers.
- COCO ``[x, y, w, h]``: already continuous, only the corner form differs.
- R-CNN proposal files: ``(y1, x1, y2, x2)``, 1-based inclusive (MATLAB indexing).

IoU and NMS go through :mod:`torchvision.ops`; the numpy variant of IoU exists because the
evaluator and the readers work on numpy arrays and should not pay for a tensor round trip.
torch is imported inside the functions that need it: the readers and the Selective Search
workers import this module, and a worker that never touches a tensor should not spend seconds
importing torch at start-up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import torch

__all__ = [
    "as_boxes",
    "voc_to_xyxy",
    "xyxy_to_voc",
    "xywh_to_xyxy",
    "xyxy_to_xywh",
    "rcnn_to_xyxy",
    "xyxy_to_rcnn",
    "box_area",
    "box_iou",
    "box_iou_numpy",
    "clip_boxes",
    "nms",
    "batched_nms",
]


def as_boxes(boxes: object) -> np.ndarray:
    """Any array-like of boxes as a float32 ``(N, 4)`` array (an empty input gives ``(0, 4)``)."""
    array = np.asarray(boxes, dtype=np.float32)
    if array.size == 0:
        return np.zeros((0, 4), dtype=np.float32)
    if array.ndim != 2 or array.shape[1] != 4:
        raise ValueError(f"boxes must have shape (N, 4), got {array.shape}")
    return array


def voc_to_xyxy(voc_boxes: np.ndarray) -> np.ndarray:
    """VOC/ILSVRC ``(xmin, ymin, xmax, ymax)``, 1-based inclusive -> our ``(x1, y1, x2, y2)``.

    Args:
        voc_boxes: ``(N, 4)`` array.
    Returns:
        ``(N, 4)`` float32 array.
    """
    boxes = as_boxes(voc_boxes).copy()
    boxes[:, 0:2] -= 1.0
    return boxes


def xyxy_to_voc(boxes: np.ndarray) -> np.ndarray:
    """Our ``(x1, y1, x2, y2)`` -> VOC ``(xmin, ymin, xmax, ymax)``, 1-based inclusive. ``(N, 4)``."""
    voc = as_boxes(boxes).copy()
    voc[:, 0:2] += 1.0
    return voc


def xywh_to_xyxy(xywh: np.ndarray) -> np.ndarray:
    """COCO / OpenCV ``(x, y, w, h)`` -> ``(x1, y1, x2, y2)``. ``(N, 4)`` float32."""
    boxes = as_boxes(xywh).copy()
    boxes[:, 2:4] += boxes[:, 0:2]
    return boxes


def xyxy_to_xywh(boxes: np.ndarray) -> np.ndarray:
    """``(x1, y1, x2, y2)`` -> COCO ``(x, y, w, h)``. ``(N, 4)`` float32."""
    xywh = as_boxes(boxes).copy()
    xywh[:, 2:4] -= xywh[:, 0:2]
    return xywh


def rcnn_to_xyxy(rcnn_boxes: np.ndarray) -> np.ndarray:
    """R-CNN proposal files' ``(y1, x1, y2, x2)``, 1-based inclusive -> ``(x1, y1, x2, y2)``."""
    rcnn = as_boxes(rcnn_boxes)
    return voc_to_xyxy(rcnn[:, [1, 0, 3, 2]])


def xyxy_to_rcnn(boxes: np.ndarray) -> np.ndarray:
    """``(x1, y1, x2, y2)`` -> R-CNN's ``(y1, x1, y2, x2)``, 1-based inclusive."""
    return xyxy_to_voc(boxes)[:, [1, 0, 3, 2]]


def box_area(boxes: np.ndarray) -> np.ndarray:
    """Areas ``(N,)`` of ``(N, 4)`` boxes; degenerate boxes have area 0, never negative."""
    boxes = as_boxes(boxes)
    return np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)


def box_iou_numpy(boxes1: np.ndarray, boxes2: np.ndarray) -> np.ndarray:
    """Jaccard overlap of every pair, in float64 so protocol thresholds compare exactly.

    Args:
        boxes1: ``(N, 4)``. boxes2: ``(M, 4)``.
    Returns:
        ``(N, M)`` float64 array; a pair whose union is empty has IoU 0.
    """
    a = np.asarray(boxes1, dtype=np.float64).reshape(-1, 4)
    b = np.asarray(boxes2, dtype=np.float64).reshape(-1, 4)
    area_a = np.clip(a[:, 2] - a[:, 0], 0, None) * np.clip(a[:, 3] - a[:, 1], 0, None)
    area_b = np.clip(b[:, 2] - b[:, 0], 0, None) * np.clip(b[:, 3] - b[:, 1], 0, None)
    iw = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0])
    ih = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1])
    inter = np.clip(iw, 0, None) * np.clip(ih, 0, None)
    union = area_a[:, None] + area_b[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.where(union > 0, inter / union, 0.0)
    return iou


def box_iou(boxes1: torch.Tensor, boxes2: torch.Tensor) -> torch.Tensor:
    """Pairwise IoU of ``(N, 4)`` and ``(M, 4)`` tensors -> ``(N, M)`` (torchvision.ops)."""
    import torchvision.ops  # torch only where tensors are used: eval/ and Selective Search run without it

    return torchvision.ops.box_iou(boxes1, boxes2)


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Clip ``(N, 4)`` boxes to the image rectangle ``[0, width] x [0, height]``."""
    clipped = as_boxes(boxes).copy()
    clipped[:, [0, 2]] = np.clip(clipped[:, [0, 2]], 0, width)
    clipped[:, [1, 3]] = np.clip(clipped[:, [1, 3]], 0, height)
    return clipped


def nms(boxes: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor, iou_threshold: float) -> np.ndarray:
    """Indices ``(K,)`` of the boxes kept by non-maximum suppression, highest score first.

    A box is dropped when its IoU with a kept, higher-scored box is above ``iou_threshold``.
    """
    import torch  # only where tensors are used: eval/ and Selective Search run without torch
    import torchvision.ops

    boxes_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    scores_t = torch.as_tensor(np.asarray(scores, dtype=np.float32)).reshape(-1)
    return torchvision.ops.nms(boxes_t, scores_t, float(iou_threshold)).numpy()


def batched_nms(
    boxes: np.ndarray | torch.Tensor,
    scores: np.ndarray | torch.Tensor,
    labels: np.ndarray | torch.Tensor,
    iou_threshold: float,
) -> np.ndarray:
    """Per-label NMS: boxes of different labels never suppress each other. Returns ``(K,)`` indices."""
    import torch  # only where tensors are used: eval/ and Selective Search run without torch
    import torchvision.ops

    boxes_t = torch.as_tensor(np.asarray(boxes, dtype=np.float32)).reshape(-1, 4)
    scores_t = torch.as_tensor(np.asarray(scores, dtype=np.float32)).reshape(-1)
    labels_t = torch.as_tensor(np.asarray(labels, dtype=np.int64)).reshape(-1)
    return torchvision.ops.batched_nms(boxes_t, scores_t, labels_t, float(iou_threshold)).numpy()
