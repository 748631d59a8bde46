"""Time eval.detection's four protocols against pycocotools (and faster_coco_eval if installed).

Generates a random problem (1-10 boxes per image; detections are jittered copies of boxes plus
random boxes, with random scores), evaluates it with every method on the same input and prints
seconds, speed-up over pycocotools and the AP@IoU each reports. coco50 must agree with
pycocotools to 1e-6 (the script exits with status 1 otherwise).

pycocotools' time covers indexing the ground truth, loading the results, ``evaluate()`` and
``accumulate()``; building its input dicts from our records is not counted. Our time covers the
whole ``evaluate()`` call, input validation and grouping included; it is the best of
``--repeat`` runs.

    python benchmarks/bench_eval.py --images 5000 --detections 100000 --classes 20 --seed 0
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import platform
import sys
import time
from collections.abc import Callable

import numpy as np

from detection.data.records import Dataset, Detections, ImageRecord
from eval.detection import PROTOCOLS, evaluate


def make_problem(num_images: int, num_detections: int, num_classes: int, seed: int) -> tuple[Dataset, Detections]:
    """A random dataset of 500x375 images and ``num_detections`` detections on it.

    About 60% of the detections are jittered copies of ground-truth boxes (with higher scores on
    average), the rest random boxes of random classes.
    """
    rng = np.random.default_rng(seed)
    width, height = 500, 375
    records = []
    for i in range(num_images):
        count = int(rng.integers(1, 11))
        size = rng.uniform(12, 200, size=(count, 2))
        corner = rng.uniform(0, 1, size=(count, 2)) * (np.array([width, height]) - size)
        boxes = np.round(np.concatenate([corner, corner + size], axis=1))
        records.append(ImageRecord(f"{i:06d}", None, width, height, boxes, rng.integers(0, num_classes, size=count)))
    dataset = Dataset("bench", [f"class{k:03d}" for k in range(num_classes)], records, _no_images)

    all_boxes = np.concatenate([r.boxes for r in records])
    all_labels = np.concatenate([r.labels for r in records])
    all_images = np.repeat(np.arange(num_images), [r.num_boxes for r in records])
    copies = int(num_detections * 0.6)
    source = rng.integers(0, len(all_boxes), size=copies)
    sizes = np.tile(all_boxes[source, 2:] - all_boxes[source, :2], 2)  # (w, h, w, h)
    copied = all_boxes[source] + rng.normal(0, 0.12, size=(copies, 4)) * sizes
    copied_scores = np.clip(rng.normal(0.6, 0.2, size=copies), 0, 1)

    extra = num_detections - copies
    size = rng.uniform(10, 250, size=(extra, 2))
    corner = rng.uniform(0, 1, size=(extra, 2)) * (np.array([width, height]) - size)
    random_boxes = np.concatenate([corner, corner + size], axis=1)
    random_scores = np.clip(rng.normal(0.35, 0.2, size=extra), 0, 1)

    image_ids = np.array([r.image_id for r in records], dtype=object)
    detections = Detections(
        np.concatenate([image_ids[all_images[source]], image_ids[rng.integers(0, num_images, size=extra)]]),
        np.concatenate([all_labels[source], rng.integers(0, num_classes, size=extra)]),
        np.concatenate([copied_scores, random_scores]),
        np.concatenate([copied, random_boxes]),
    )
    return dataset, detections.select(rng.permutation(num_detections))


def _no_images(record: ImageRecord) -> np.ndarray:
    raise RuntimeError("the benchmark has no images")


def coco_inputs(dataset: Dataset, detections: Detections) -> tuple[dict, list[dict]]:
    """COCO ground-truth dict and results list for the same problem (image ids in record order)."""
    annotations = []
    for i, record in enumerate(dataset.records):
        for box, label in zip(record.boxes.tolist(), record.labels.tolist()):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append(
                {"id": len(annotations) + 1, "image_id": i + 1, "category_id": label + 1,
                 "bbox": [box[0], box[1], w, h], "area": w * h, "iscrowd": 0}
            )
    truth = {
        "images": [{"id": i + 1, "width": r.width, "height": r.height} for i, r in enumerate(dataset.records)],
        "categories": [{"id": c + 1, "name": name} for c, name in enumerate(dataset.classes)],
        "annotations": annotations,
    }
    position = dataset.index_of()
    boxes = detections.boxes.astype(np.float64)
    results = [
        {"image_id": position[image_id] + 1, "category_id": label + 1,
         "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "score": score}
        for image_id, label, score, box in zip(
            detections.image_ids, detections.labels.tolist(), detections.scores.astype(np.float64).tolist(), boxes.tolist()
        )
    ]
    return truth, results


def _set_params(evaluator: object, iou: float, max_dets: int) -> None:
    evaluator.params.iouThrs = np.array([iou])
    evaluator.params.maxDets = [max_dets]
    evaluator.params.areaRng = [[0**2, 1e5**2]]
    evaluator.params.areaRngLbl = ["all"]


def _map_from_precision(precision: np.ndarray) -> float:
    """mAP from COCO's ``(T, R, K, A, M)`` precision, as COCOeval.summarize averages it."""
    values = np.asarray(precision)[0, :, :, 0, 0]
    return float(np.mean(values[values > -1]))


def run_pycocotools(truth_dict: dict, results: list[dict], iou: float, max_dets: int) -> float:
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = truth_dict
        truth.createIndex()
        evaluator = COCOeval(truth, truth.loadRes(results), "bbox")
        _set_params(evaluator, iou, max_dets)
        evaluator.evaluate()
        evaluator.accumulate()
    return _map_from_precision(evaluator.eval["precision"])


def run_faster_coco_eval(truth_dict: dict, results: list[dict], iou: float, max_dets: int) -> float:
    import faster_coco_eval

    truth = faster_coco_eval.COCO(truth_dict)
    evaluator = faster_coco_eval.COCOeval_faster(
        truth, truth.loadRes(results), "bbox", print_function=lambda *args: None
    )
    _set_params(evaluator, iou, max_dets)
    evaluator.evaluate()
    evaluator.accumulate()
    return _map_from_precision(evaluator.eval["precision"])


def timed(function: Callable[[], float], repeat: int) -> tuple[float, float]:
    """Best wall time over ``repeat`` runs, and the value the function returned."""
    best, value = float("inf"), float("nan")
    for _ in range(repeat):
        started = time.perf_counter()
        value = function()
        best = min(best, time.perf_counter() - started)
    return best, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--detections", type=int, default=100000)
    parser.add_argument("--classes", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--iou", type=float, default=0.5)
    parser.add_argument("--max-dets", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3, help="runs of each of our protocols (best is reported)")
    parser.add_argument("--skip-reference", action="store_true", help="do not run pycocotools / faster_coco_eval")
    args = parser.parse_args(argv)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(
        f"machine: {platform.machine()} {platform.processor() or platform.platform()}, {cores} usable cores "
        f"({os.cpu_count()} total), python {platform.python_version()}, numpy {np.__version__}"
    )
    dataset, detections = make_problem(args.images, args.detections, args.classes, args.seed)
    num_boxes = sum(r.num_boxes for r in dataset.records)
    print(
        f"problem: {len(dataset)} images, {num_boxes} boxes, {len(detections)} detections, "
        f"{dataset.num_classes} classes, seed {args.seed}"
    )

    rows: list[tuple[str, float, float]] = []
    for protocol in PROTOCOLS:
        seconds, value = timed(
            lambda: evaluate(dataset, detections, protocol, iou=args.iou, max_dets=args.max_dets).map, args.repeat
        )
        rows.append((f"eval.detection {protocol}", seconds, value))

    reference = None
    if not args.skip_reference:
        truth_dict, results = coco_inputs(dataset, detections)
        seconds, reference = timed(lambda: run_pycocotools(truth_dict, results, args.iou, args.max_dets), 1)
        rows.append(("pycocotools (index+evaluate+accumulate)", seconds, reference))
        try:
            import faster_coco_eval  # noqa: F401
        except ImportError:
            print("faster_coco_eval not installed: skipped")
        else:
            truth_dict, results = coco_inputs(dataset, detections)  # the COCO APIs annotate their inputs
            seconds, value = timed(lambda: run_faster_coco_eval(truth_dict, results, args.iou, args.max_dets), 1)
            rows.append(("faster_coco_eval (index+evaluate+accumulate)", seconds, value))

    baseline = next((s for name, s, _ in rows if name.startswith("pycocotools")), None)
    width = max(len(name) for name, _, _ in rows)
    print(f"\n{'method':<{width}}  {'seconds':>8}  {'vs pycocotools':>14}  {'AP@' + format(args.iou, 'g'):>8}")
    for name, seconds, value in rows:
        speedup = f"{baseline / seconds:.1f}x" if baseline else "-"
        print(f"{name:<{width}}  {seconds:>8.3f}  {speedup:>14}  {value:>8.4f}")

    if reference is not None:
        ours = next(value for name, _, value in rows if name.endswith("coco50"))
        if abs(ours - reference) > 1e-6:
            print(f"MISMATCH: coco50 {ours!r} vs pycocotools {reference!r}")
            return 1
        print(f"\ncoco50 equals pycocotools: |diff| = {abs(ours - reference):.2e}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
