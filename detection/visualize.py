"""Pictures of ground truth, proposals and detections, drawn on the images as PNG.

Colours: ground truth that a detection found in white, missed ground truth in orange, true
positive detections in green, false positives in red, proposals in thin blue. A detection is a
true positive when it is the highest-scored detection of its class to overlap a still-unmatched
ground-truth box of that class at IoU >= ``iou`` (the PASCAL rule, score threshold applied first).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cv2
import numpy as np

from detection.core.boxes import box_iou_numpy
from detection.core.problems import DataError, WarningTally
from detection.data.images import count_if_truncated
from detection.data.records import Dataset, Detections, ImageRecord

__all__ = ["match_for_display", "draw_image", "write_gallery"]

GT_FOUND = (255, 255, 255)
GT_MISSED = (255, 150, 0)
TRUE_POSITIVE = (40, 220, 40)
FALSE_POSITIVE = (235, 40, 40)
PROPOSAL = (70, 130, 255)

logger = logging.getLogger(__name__)


def match_for_display(record: ImageRecord, boxes: np.ndarray, labels: np.ndarray, scores: np.ndarray, iou: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """``(is_true_positive (D,), gt_found (N,))`` for one image's detections."""
    true_positive = np.zeros(len(boxes), dtype=bool)
    found = np.zeros(record.num_boxes, dtype=bool)
    if len(boxes) == 0 or record.num_boxes == 0:
        return true_positive, found
    overlaps = box_iou_numpy(boxes, record.boxes)
    overlaps[labels[:, None] != record.labels[None, :]] = 0.0
    for d in np.argsort(-scores, kind="stable"):
        candidates = np.where(found, 0.0, overlaps[d])
        best = int(np.argmax(candidates))
        if candidates[best] >= iou:
            true_positive[d] = True
            found[best] = True
    return true_positive, found


def _rectangle(canvas: np.ndarray, box: np.ndarray, colour: tuple[int, int, int], thickness: int) -> None:
    x1, y1, x2, y2 = (int(round(v)) for v in box)
    cv2.rectangle(canvas, (x1, y1), (max(x1, x2 - 1), max(y1, y2 - 1)), colour, thickness, lineType=cv2.LINE_AA)


def _label(canvas: np.ndarray, box: np.ndarray, text: str, colour: tuple[int, int, int]) -> None:
    x, y = int(box[0]), max(10, int(box[1]) - 3)
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(canvas, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, 0.4, colour, 1, cv2.LINE_AA)


def draw_image(
    image: np.ndarray,
    record: ImageRecord,
    classes: list[str],
    proposals: np.ndarray | None = None,
    detections: Detections | None = None,
    score_threshold: float = 0.3,
    max_proposals: int = 100,
) -> np.ndarray:
    """A copy of ``image`` (uint8 RGB) with the ground truth, proposals and detections drawn."""
    canvas = np.ascontiguousarray(image.copy())
    if proposals is not None:
        for box in proposals[:max_proposals]:
            _rectangle(canvas, box, PROPOSAL, 1)
    found = np.zeros(record.num_boxes, dtype=bool)
    if detections is not None:
        mine = (detections.image_ids == record.image_id) & (detections.scores >= score_threshold)
        boxes, labels, scores = detections.boxes[mine], detections.labels[mine], detections.scores[mine]
        true_positive, found = match_for_display(record, boxes, labels, scores)
    for box, is_found in zip(record.boxes, found):
        _rectangle(canvas, box, GT_FOUND if is_found or detections is None else GT_MISSED, 2)
    if detections is not None:
        for box, label, score, is_tp in zip(boxes, labels, scores, true_positive):
            colour = TRUE_POSITIVE if is_tp else FALSE_POSITIVE
            _rectangle(canvas, box, colour, 2)
            _label(canvas, box, f"{classes[label]} {score:.2f}", colour)
    return canvas


def write_gallery(
    dataset: Dataset,
    out_dir: str | Path,
    proposals: dict[str, np.ndarray] | None = None,
    detections: Detections | None = None,
    image_ids: list[str] | None = None,
    score_threshold: float = 0.3,
    max_images: int = 12,
) -> list[Path]:
    """One PNG per image (the first ``max_images``, or ``image_ids``) in ``out_dir``.

    Unreadable images are skipped and truncated ones drawn as decoded, both counted in the
    closing summary line.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    wanted = set(image_ids) if image_ids else None
    tally = WarningTally(f"show {dataset.spec}", logger)
    paths = []
    for record in dataset:
        if (wanted is not None and record.image_id not in wanted) or len(paths) >= max_images:
            continue
        try:
            image = dataset.load_image(record)
        except DataError as error:
            tally.warn("unreadable image skipped", error.path, error.fault)
            continue
        count_if_truncated(tally, record.path)
        drawn = draw_image(image, record, dataset.classes, None if proposals is None else proposals.get(record.image_id), detections, score_threshold)
        path = out_dir / f"{record.image_id.replace('/', '_')}.png"
        cv2.imwrite(str(path), drawn[:, :, ::-1])
        paths.append(path)
    tally.log_summary()
    return paths
