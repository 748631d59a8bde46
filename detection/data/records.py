"""The data model every stage shares: one record per image, one columnar table of detections.

Naming and shapes (N ground-truth boxes in an image, D detections):

- ``ImageRecord.boxes``: ``(N, 4)`` float32 ``(x1, y1, x2, y2)``, 0-based continuous pixels
  (see :mod:`detection.core.boxes`).
- ``ImageRecord.labels``: ``(N,)`` int64 indices into ``Dataset.classes`` (0-based). The region
  classifier's output ``k`` is class ``k - 1``: its output 0 is background.
- ``ImageRecord.difficult``: ``(N,)`` bool, PASCAL "difficult": neither a hit nor a miss.
- ``ImageRecord.crowd``: ``(N,)`` bool, COCO ``iscrowd``: a region that may absorb any number of
  detections and is never counted as a miss.
- ``Detections``: parallel arrays ``image_ids (D,)`` str, ``labels (D,)`` int64 (into the same
  class list), ``scores (D,)`` float32, ``boxes (D, 4)`` float32.

Images are never stored here: ``Dataset.load_image`` decodes them on demand.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["ImageRecord", "Dataset", "Detections"]


def _empty_flags(n: int) -> np.ndarray:
    return np.zeros((n,), dtype=bool)


@dataclass
class ImageRecord:
    """Ground truth of one image. ``path`` is None for generated images (``synthetic``)."""

    image_id: str
    path: Path | None
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), dtype=np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), dtype=np.int64))
    difficult: np.ndarray | None = None
    crowd: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        n = len(self.boxes)
        if len(self.labels) != n:
            raise ValueError(f"image {self.image_id}: {n} boxes but {len(self.labels)} labels")
        self.difficult = _empty_flags(n) if self.difficult is None else np.asarray(self.difficult, dtype=bool)
        self.crowd = _empty_flags(n) if self.crowd is None else np.asarray(self.crowd, dtype=bool)
        if self.difficult.shape != (n,) or self.crowd.shape != (n,):
            raise ValueError(f"image {self.image_id}: flag arrays must have shape ({n},)")

    @property
    def num_boxes(self) -> int:
        return len(self.boxes)


@dataclass
class Dataset:
    """A list of image records, the class names, and a way to decode each image.

    ``blacklist`` holds ``(image_id, label)`` pairs whose ground truth and detections the ILSVRC
    protocol ignores (the DET validation blacklist); other protocols ignore it.
    ``image_loader`` maps a record to a uint8 RGB ``(H, W, 3)`` array. ``class_ids`` are the
    external category ids of a COCO source (results files name classes by them), else None.
    """

    spec: str
    classes: list[str]
    records: list[ImageRecord]
    image_loader: Callable[[ImageRecord], np.ndarray]
    blacklist: frozenset[tuple[str, int]] = frozenset()
    class_ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> ImageRecord:
        return self.records[index]

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def load_image(self, record: ImageRecord | int) -> np.ndarray:
        """Decode one image as uint8 RGB ``(H, W, 3)``."""
        if isinstance(record, int):
            record = self.records[record]
        return self.image_loader(record)

    def index_of(self) -> dict[str, int]:
        """Map from image id to position in ``records``."""
        return {record.image_id: i for i, record in enumerate(self.records)}

    def fingerprint(self) -> str:
        """A short hash of everything that defines the data: ids, sizes, classes and boxes.

        Stores of derived results (proposals, detections) record it, and refuse to be read
        against a dataset whose fingerprint differs.
        """
        digest = hashlib.sha256()
        digest.update(json.dumps(self.classes).encode())
        for record in self.records:
            digest.update(f"{record.image_id}|{record.width}|{record.height}|".encode())
            digest.update(np.ascontiguousarray(record.boxes, dtype="<f4").tobytes())
            digest.update(np.ascontiguousarray(record.labels, dtype="<i8").tobytes())
        return digest.hexdigest()[:16]


@dataclass
class Detections:
    """Detections of a whole dataset as parallel arrays (see the module note for shapes)."""

    image_ids: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray

    def __post_init__(self) -> None:
        self.image_ids = np.asarray(self.image_ids, dtype=object).reshape(-1)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        n = len(self.image_ids)
        if not (len(self.labels) == len(self.scores) == len(self.boxes) == n):
            raise ValueError(
                f"detections arrays disagree in length: {n} ids, {len(self.labels)} labels, "
                f"{len(self.scores)} scores, {len(self.boxes)} boxes"
            )

    def __len__(self) -> int:
        return len(self.image_ids)

    @classmethod
    def empty(cls) -> Detections:
        return cls(np.zeros((0,), dtype=object), np.zeros((0,), np.int64), np.zeros((0,), np.float32), np.zeros((0, 4), np.float32))

    @classmethod
    def concatenate(cls, parts: Sequence[Detections]) -> Detections:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(
            np.concatenate([p.image_ids for p in parts]),
            np.concatenate([p.labels for p in parts]),
            np.concatenate([p.scores for p in parts]),
            np.concatenate([p.boxes for p in parts]),
        )

    def select(self, mask_or_index: np.ndarray) -> Detections:
        return Detections(
            self.image_ids[mask_or_index],
            self.labels[mask_or_index],
            self.scores[mask_or_index],
            self.boxes[mask_or_index],
        )
