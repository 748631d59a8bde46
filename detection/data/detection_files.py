"""Detections files: the project's JSON format and COCO results, read and written.

Our format is a JSON list of ``{"image_id": str, "label": str, "score": float,
"box": [x1, y1, x2, y2]}`` with boxes in the project's convention (0-based continuous pixels).
COCO results are ``{"image_id": int, "category_id": int, "bbox": [x, y, w, h], "score": float}``.

Reading validates against the dataset: a malformed file or entry is a
:class:`~detection.core.problems.DataError` naming the file and the entry; detections naming images
or labels the dataset does not have are counted warnings and left out (a file in which no
detection matches the dataset is an error: it is almost certainly for other data).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from detection.core import boxes as box_ops
from detection.core.atomic import write_json
from detection.core.problems import DataError, WarningTally
from detection.data.records import Dataset, Detections

__all__ = ["read_detections", "write_detections", "write_coco_results", "detections_to_json"]

logger = logging.getLogger(__name__)


def _load(path: Path) -> list:
    try:
        with open(path) as handle:
            data = json.load(handle)
    except FileNotFoundError:
        raise DataError(path, "detections file not found") from None
    except json.JSONDecodeError as error:
        raise DataError(path, f"malformed JSON ({error})") from None
    if not isinstance(data, list):
        raise DataError(path, f"expected a JSON list of detections, got {type(data).__name__}")
    return data


def _columns(path: Path, entries: list, keys: tuple[str, str, str, str]) -> tuple[list, list, np.ndarray, np.ndarray]:
    """Pull ``(image ids, labels, scores, boxes)`` out of dicts, naming the first bad entry."""
    id_key, label_key, score_key, box_key = keys
    try:
        ids = [entry[id_key] for entry in entries]
        labels = [entry[label_key] for entry in entries]
        scores = np.array([entry[score_key] for entry in entries], dtype=np.float64)
        raw_boxes = [entry[box_key] for entry in entries]
    except (KeyError, TypeError, ValueError):
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict) or not all(k in entry for k in keys):
                raise DataError(path, f"entry {index} must be an object with keys {', '.join(keys)}: {str(entry)[:120]}") from None
            try:
                float(entry[score_key])
            except (TypeError, ValueError):
                raise DataError(path, f"entry {index}: score is not a number: {entry[score_key]!r}") from None
        raise
    try:
        boxes = np.array(raw_boxes, dtype=np.float64).reshape(len(entries), 4)
    except (TypeError, ValueError):
        for index, box in enumerate(raw_boxes):
            if not isinstance(box, list) or len(box) != 4 or not all(isinstance(v, (int, float)) for v in box):
                raise DataError(path, f"entry {index}: '{box_key}' must be 4 numbers, got {box!r}") from None
        raise
    bad = ~np.isfinite(scores) | ~np.isfinite(boxes).all(axis=1)
    if bad.any():
        raise DataError(path, f"entry {int(np.argmax(bad))}: score or box is not finite ({int(bad.sum())} such entries)")
    return ids, labels, scores, boxes


def read_detections(path: str | Path, dataset: Dataset, coco: bool | None = None) -> Detections:
    """Read detections for ``dataset``; ``coco=None`` picks COCO results for a ``coco:`` dataset.

    COCO results may also be given for any dataset: their ``image_id`` then names the record
    by its id (as a string), and ``category_id`` is ``dataset.class_ids`` (or 1..C).
    """
    path = Path(path)
    entries = _load(path)
    if coco is None:
        coco = bool(entries) and isinstance(entries[0], dict) and "category_id" in entries[0]
    tally = WarningTally(str(path), logger)
    if not entries:
        return Detections.empty()
    if coco:
        ids, labels_raw, scores, boxes = _columns(path, entries, ("image_id", "category_id", "score", "bbox"))
        boxes[:, 2:] += boxes[:, :2]
        class_ids = dataset.class_ids or list(range(1, dataset.num_classes + 1))
        label_of: dict = {cid: i for i, cid in enumerate(class_ids)}
    else:
        ids, labels_raw, scores, boxes = _columns(path, entries, ("image_id", "label", "score", "box"))
        label_of = {name: i for i, name in enumerate(dataset.classes)}
    ids = [str(i) for i in ids]
    known_ids = set(dataset.index_of())
    id_ok = np.array([i in known_ids for i in ids], dtype=bool)
    labels = np.array([label_of.get(label, -1) if isinstance(label, (str, int)) else -1 for label in labels_raw], dtype=np.int64)
    label_ok = labels >= 0
    inverted = (boxes[:, 2] < boxes[:, 0]) | (boxes[:, 3] < boxes[:, 1])
    for mask, kind, what in (
        (~id_ok, "detection for an image not in the dataset, dropped", ids),
        (id_ok & ~label_ok, "detection with a label not in the dataset, dropped", labels_raw),
        (id_ok & label_ok & inverted, "detection with an inverted box, dropped", boxes.tolist()),
    ):
        for index in np.flatnonzero(mask):
            tally.warn(kind, f"{path} entry {index}", str(what[index]))
    keep = id_ok & label_ok & ~inverted
    if not keep.any():
        raise DataError(path, f"none of its {len(entries)} detections names an image and label of {dataset.spec}")
    tally.log_summary()
    return Detections(np.array(ids, dtype=object)[keep], labels[keep], scores[keep].astype(np.float32), boxes[keep].astype(np.float32))


def detections_to_json(detections: Detections, classes: list[str]) -> list[dict]:
    """Our detections format as a list of dicts, one per detection."""
    return [
        {"image_id": str(image_id), "label": classes[label], "score": float(score), "box": [float(v) for v in box]}
        for image_id, label, score, box in zip(detections.image_ids, detections.labels, detections.scores, detections.boxes)
    ]


def write_detections(path: str | Path, detections: Detections, classes: list[str]) -> Path:
    """Write our detections format atomically."""
    return write_json(path, detections_to_json(detections, classes), indent=None)


def write_coco_results(path: str | Path, detections: Detections, dataset: Dataset) -> Path:
    """Write COCO results. Image ids are ints when the dataset's ids are numeric, else strings."""
    class_ids = dataset.class_ids or list(range(1, dataset.num_classes + 1))
    xywh = box_ops.xyxy_to_xywh(detections.boxes)
    results = []
    for image_id, label, score, box in zip(detections.image_ids, detections.labels, detections.scores, xywh):
        results.append(
            {
                "image_id": int(image_id) if str(image_id).isdigit() else str(image_id),
                "category_id": int(class_ids[label]),
                "bbox": [float(v) for v in box],
                "score": float(score),
            }
        )
    return write_json(path, results, indent=None)
