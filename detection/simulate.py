"""A simulated detector for exercising the evaluator (``rcnn simulate``).

``simulate_detections`` perturbs ground truth the way a real detector errs: it misses some
objects, localises the rest with noise proportional to their size, confuses some classes,
fires duplicates and adds background false positives, with scores that are higher for better
detections. It is deterministic in ``seed``. ``rcnn simulate`` scores such detections on any
data under every protocol, so the evaluator's numbers can be seen on a realistic input.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from detection.core import boxes as box_ops
from detection.data.datasets import load_dataset
from detection.data.detection_files import write_detections
from detection.data.records import Dataset, Detections
from eval.detection import evaluate

__all__ = ["simulate_detections", "run_simulation"]

logger = logging.getLogger(__name__)


def simulate_detections(
    dataset: Dataset,
    seed: int = 0,
    recall: float = 0.85,
    localisation_noise: float = 0.12,
    confusion: float = 0.1,
    duplicate_rate: float = 0.2,
    false_positives_per_image: float = 3.0,
) -> Detections:
    """Detections ``(D,)`` for every image of ``dataset`` made from its ground truth."""
    parts = []
    for index, record in enumerate(dataset.records):
        rng = np.random.default_rng([seed, index])
        gt = record.boxes
        hit = rng.random(len(gt)) < recall
        copies = np.concatenate([np.flatnonzero(hit), np.flatnonzero(hit & (rng.random(len(gt)) < duplicate_rate))])
        sizes = np.tile(gt[copies, 2:] - gt[copies, :2], 2)  # (w, h, w, h) per copy
        noise = rng.normal(0.0, localisation_noise, (len(copies), 4)) * sizes
        boxes = gt[copies] + noise
        quality = box_ops.box_iou_numpy(boxes, gt[copies]).diagonal() if len(copies) else np.zeros(0)
        scores = np.clip(0.35 + 0.6 * quality + rng.normal(0, 0.12, len(copies)), 0.01, 0.999)
        labels = record.labels[copies].copy()
        confused = rng.random(len(copies)) < confusion
        labels[confused] = rng.integers(0, dataset.num_classes, int(confused.sum()))
        num_fp = rng.poisson(false_positives_per_image)
        centre = rng.random((num_fp, 2)) * [record.width, record.height]
        half = np.exp(rng.uniform(np.log(8), np.log(max(16, min(record.width, record.height) / 2)), (num_fp, 2)))
        fp_boxes = np.concatenate([centre - half, centre + half], axis=1)
        fp_scores = np.clip(rng.beta(2, 5, num_fp), 0.01, 0.999)
        fp_labels = rng.integers(0, dataset.num_classes, num_fp)
        all_boxes = box_ops.clip_boxes(np.concatenate([boxes, fp_boxes]).astype(np.float32), record.width, record.height)
        valid = (all_boxes[:, 2] > all_boxes[:, 0]) & (all_boxes[:, 3] > all_boxes[:, 1])
        count = len(all_boxes)
        parts.append(
            Detections(
                np.full(count, record.image_id, dtype=object),
                np.concatenate([labels, fp_labels]),
                np.concatenate([scores, fp_scores]),
                all_boxes,
            ).select(valid)
        )
    return Detections.concatenate(parts)


def run_simulation(spec: str, out_dir: Path, seed: int = 0) -> int:
    """Score simulated detections on ``spec`` under every protocol; print the tables."""
    dataset = load_dataset(spec)
    detections = simulate_detections(dataset, seed=seed)
    path = write_detections(Path(out_dir) / "detections.json", detections, dataset.classes)
    num_gt = sum(r.num_boxes for r in dataset)
    print(f"data: {dataset.spec}  images: {len(dataset)}  objects: {num_gt}  classes: {dataset.num_classes}")
    print(f"detections: {len(detections)} simulated from the ground truth (misses, noise, confusions, duplicates, background) -> {path}")
    print()
    results = {protocol: evaluate(dataset, detections, protocol=protocol) for protocol in ("ilsvrc", "voc07", "voc12", "coco50")}
    print(results["ilsvrc"].format_table())
    print()
    print("| protocol | mAP@0.5 |")
    print("|---|---|")
    for protocol, result in results.items():
        print(f"| {protocol} | {result.map:.4f} |")
    print()
    print(f"Evaluate the same file yourself: rcnn evaluate --gt {dataset.spec} --detections {path} --protocol voc12")
    return 0
