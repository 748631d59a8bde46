"""Detection average precision under the ILSVRC, PASCAL VOC and COCO rules.

One entry point, :func:`evaluate`, scores a :class:`~detection.data.records.Detections` table against a
:class:`~detection.data.records.Dataset` under one of four protocols. All of them sort each class's
detections by score, decide which ones are true positives, and turn the running precision /
recall into an average precision (AP) per class; the mean over classes that have ground truth is
the mAP. :func:`match_detections` stops before the AP and hands over the matching itself (which
detection took which box, which were ignored) for the error analysis in :mod:`eval.analysis`.
The protocols differ in how a detection is matched and how the curve is summarised:

``ilsvrc``
    The ILSVRC DET devkit (``eval_det``). Each ground-truth box of width ``w`` and height ``h``
    gets its own threshold ``min(iou, w*h / ((w+10) * (h+10)))``, which is lenient with small
    objects. In score order, a detection takes the unmatched box of its class in its image with
    the highest IoU among those at or above their threshold (the first such box on ties), or is a
    false positive. ``(image, class)`` pairs on ``dataset.blacklist`` lose both their boxes and
    their detections. ``difficult`` and ``crowd`` are ignored: every box counts. AP is all-point.
``voc07`` / ``voc12``
    The PASCAL VOCdevkit (``VOCevaldet``). A detection looks only at the single box with the
    highest IoU (difficult boxes included, first box on ties). At IoU >= ``iou`` it is ignored if
    that box is difficult, a true positive if the box is still free (the box is then taken), and a
    duplicate false positive otherwise; below the threshold it is a false positive. Difficult
    boxes are not positives. ``crowd`` boxes are treated exactly like difficult ones. ``voc07``
    uses the 11-point AP of VOC 2007 at the devkit's own thresholds (MATLAB's ``0:0.1:1``, see
    :data:`VOC07_RECALL_POINTS`), ``voc12`` the all-point AP of VOC 2010 and later.
``coco50``
    ``pycocotools.cocoeval.COCOeval`` for bounding boxes with ``iouThrs=[iou]``, the ``all`` area
    range and ``maxDets=[max_dets]``, reproduced to the last bit (101-point AP). ``crowd`` boxes
    are COCO's ``iscrowd`` regions: overlap is intersection over the detection's area, any number
    of detections may land on one, and those detections are ignored. ``difficult`` boxes become
    COCO's ``ignore`` boxes: not positives, matched one-to-one like normal boxes, and a detection
    matched to one is ignored. (pycocotools itself overwrites an annotation's ``ignore`` field
    with ``iscrowd``; we keep the documented meaning of the field.) Like pycocotools, boxes whose
    area ``(x2-x1)*(y2-y1)`` lies outside ``[0, 1e10]`` are outside the ``all`` range: such ground
    truth is ignored, and such a detection is ignored unless it is matched.

Boxes are the project's continuous 0-based ``(x1, y1, x2, y2)`` (see :mod:`detection.core.boxes`), so
the devkits' ``+1`` widths are already included and all protocols compute IoU the same way:
``inter / (area_det + area_gt - inter)`` in float64 (``inter / area_det`` for COCO crowd regions),
zero unless the boxes overlap with a positive width and height. Thresholds are inclusive: an IoU
of exactly 0.5 meets a 0.5 threshold.

Ties in score are broken by input order within an image. When the class's detections are pooled,
``ilsvrc`` and ``coco50`` break ties by dataset record order and then input order (as
pycocotools does with image ids in record order), ``voc07``/``voc12`` by input order (MATLAB's
stable sort in the VOCdevkit).

Speed: detections are sorted once by (class, image, -score) and every (class, image) group with
both detections and ground truth is evaluated in padded blocks, IoUs a block at once; only the
greedy matching of ``ilsvrc`` and ``coco50`` loops, over a detection's rank within its group
(``benchmarks/bench_eval.py`` times it against pycocotools).
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from detection.data.records import Dataset, Detections

__all__ = ["PROTOCOLS", "EvaluationResult", "Matching", "coco_area", "evaluate", "match_detections"]

logger = logging.getLogger(__name__)

PROTOCOLS: tuple[str, ...] = ("ilsvrc", "voc07", "voc12", "coco50")

#: The ILSVRC devkit's ``pixelTolerance``: how many pixels of slack a small box is allowed.
ILSVRC_PIXEL_TOLERANCE = 10.0

#: pycocotools' ``all`` area range, ``[0 ** 2, 1e5 ** 2]``.
COCO_AREA_RANGE = (0.0, 1e10)

#: pycocotools' recall thresholds ``0, 0.01, ..., 1`` (built the same way, so bit-identical).
COCO_RECALL_THRESHOLDS = np.linspace(0.0, 1.0, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)


def matlab_colon(start: float, step: float, stop: float) -> np.ndarray:
    """``start:step:stop`` as MATLAB's colon operator computes it in double precision.

    For ``n = round((stop - start) / step)`` intervals, element ``k`` of the first half is
    ``start + k*step`` and element ``n - k`` of the second half is ``stop - k*step``; an even ``n``
    puts ``(start + stop) / 2`` in the middle. Only for steps that divide the range (as in the
    devkits); which rounding a threshold gets decides whether an exact recall reaches it.
    """
    n = int(round((stop - start) / step))
    values = np.empty(n + 1)
    for k in range(n // 2 + 1):
        values[k] = start + k * step
        values[n - k] = stop - k * step
    if n % 2 == 0:
        values[n // 2] = (start + stop) / 2
    return values


#: VOC 2007's recall thresholds: ``VOCevaldet.m``'s ``t=0:0.1:1`` as MATLAB builds it. The fourth is
#: ``3*0.1 = 0.30000000000000004``, which a recall of exactly 3/10 does not reach; 0.6 and 0.7 come
#: from ``1 - 4*0.1`` and ``1 - 3*0.1``, the nearest doubles, which 6/10 and 7/10 do reach (python
#: ports' ``np.arange(0., 1.1, 0.1)`` has 0.6000000000000001 and 0.7000000000000001 there instead).
VOC07_RECALL_POINTS = matlab_colon(0.0, 0.1, 1.0)

# Upper bound on (groups x detections x boxes) in one padded block: a few float64 temporaries of
# this size stay in the tens of megabytes.
_BLOCK_ELEMENTS = 1 << 20

# Per-block matcher: IoU (B, D, G) and global ground-truth positions (B, G), -1 at padding
# -> (true_positive, ignored) (B, D) bool, and the column of the box each detection took or
# landed on (B, D) int, -1 where none.
_BlockMatcher = Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]]


@dataclass
class EvaluationResult:
    """Average precision of one evaluation.

    ``per_class_ap`` holds only classes with at least one positive under the protocol; ``map`` is
    their mean (0.0, with a logged warning, when no class has one). ``num_gt`` counts the
    positives the protocol uses (difficult, crowd or blacklisted boxes excluded where the
    protocol excludes them) and ``num_det`` the detections it scores (after the blacklist and
    ``max_dets``), for every class.
    """

    protocol: str
    iou: float
    map: float
    per_class_ap: dict[str, float]
    num_gt: dict[str, int]
    num_det: dict[str, int]
    classes_without_gt: list[str]

    def to_json(self) -> dict[str, object]:
        """A JSON-ready dict: protocol, iou, map, per_class, num_gt, num_det, classes_without_gt."""
        return {
            "protocol": self.protocol,
            "iou": float(self.iou),
            "map": float(self.map),
            "per_class": {name: float(ap) for name, ap in self.per_class_ap.items()},
            "num_gt": {name: int(n) for name, n in self.num_gt.items()},
            "num_det": {name: int(n) for name, n in self.num_det.items()},
            "classes_without_gt": list(self.classes_without_gt),
        }

    def format_table(self) -> str:
        """A per-class table (class, #gt, #det, AP); the last line is ``mAP: 0.xxxx``."""
        width = max([len("class")] + [len(name) for name in self.num_gt])
        lines = [
            f"{self.protocol} AP at IoU {self.iou:g}",
            f"{'class':<{width}}  {'#gt':>7}  {'#det':>8}  {'AP':>6}",
        ]
        for name in self.num_gt:
            ap = self.per_class_ap.get(name)
            ap_text = "-" if ap is None else f"{ap:.4f}"
            lines.append(f"{name:<{width}}  {self.num_gt[name]:>7d}  {self.num_det.get(name, 0):>8d}  {ap_text:>6}")
        if self.classes_without_gt:
            lines.append(f"({len(self.classes_without_gt)} classes without ground truth are left out of the mean)")
        lines.append(f"mAP: {self.map:.4f}")
        return "\n".join(lines)


@dataclass
class _GroundTruth:
    """Every ground-truth box of a dataset as parallel arrays: boxes ``(G, 4)`` float64, the rest ``(G,)``."""

    boxes: np.ndarray
    labels: np.ndarray
    images: np.ndarray  # positions in dataset.records
    difficult: np.ndarray
    crowd: np.ndarray

    def take(self, index: np.ndarray) -> _GroundTruth:
        return _GroundTruth(
            self.boxes[index], self.labels[index], self.images[index], self.difficult[index], self.crowd[index]
        )


@dataclass
class _Found:
    """Detections as parallel arrays: boxes ``(D, 4)`` float64, the rest ``(D,)``.

    ``position`` is each detection's index in the caller's table: the last tie-breaker.
    """

    boxes: np.ndarray
    labels: np.ndarray
    images: np.ndarray
    scores: np.ndarray  # float64
    position: np.ndarray

    def take(self, index: np.ndarray) -> _Found:
        return _Found(self.boxes[index], self.labels[index], self.images[index], self.scores[index], self.position[index])


def evaluate(
    dataset: Dataset,
    detections: Detections,
    protocol: str = "ilsvrc",
    iou: float = 0.5,
    max_dets: int = 100,
) -> EvaluationResult:
    """Average precision per class and its mean under ``protocol`` (see the module note).

    Args:
        dataset: ground truth; ``difficult``/``crowd`` flags and ``blacklist`` are used as the
            protocol says.
        detections: ``D`` detections; every image id must be in ``dataset`` and every label in
            ``0 .. num_classes - 1``.
        protocol: one of :data:`PROTOCOLS`.
        iou: overlap threshold (for ``ilsvrc`` the upper bound of the per-box threshold).
        max_dets: ``coco50`` only: detections kept per image and class, highest scores first.

    Raises:
        ValueError: unknown protocol, a threshold outside [0, 1], ``max_dets < 1``, detections on
            images or labels the dataset does not have, or NaN scores.
    """
    started = time.perf_counter()
    matching = match_detections(dataset, detections, protocol, iou, max_dets)
    num_found = np.bincount(matching.found.labels, minlength=dataset.num_classes)
    result = _result(dataset.classes, protocol, iou, matching.average_precision(), matching.num_positives, num_found)
    logger.debug(
        "%s: %d detections, %d boxes, mAP %.4f in %.3f s",
        protocol, len(matching.found.labels), int(matching.positive.sum()), result.map, time.perf_counter() - started,
    )
    return result


@dataclass
class Matching:
    """The fate of every scored detection under one protocol: what :func:`evaluate` counts.

    ``found`` holds the detections the protocol scores (the ILSVRC blacklist and coco50's
    ``max_dets`` already applied) sorted by (class, image, score descending, input order);
    ``found.position`` is each one's index in the caller's table, ``found.images`` its record
    position. ``truth`` holds the ground truth (blacklisted pairs removed) sorted by (class, image).

    Per detection ``(D,)``: ``true_positive``; ``ignored`` (counts neither way: VOC difficult,
    COCO ignore/crowd or out-of-range); ``matched_gt``, the index into ``truth`` of the box a
    true positive took or an ignored detection landed on, -1 otherwise. Per box ``(G,)``:
    ``positive`` (counts as an object to find) and ``threshold``, the IoU a detection must reach
    on it (``iou``, or the ILSVRC per-box threshold).
    """

    protocol: str
    iou: float
    num_classes: int
    found: _Found
    truth: _GroundTruth
    true_positive: np.ndarray
    ignored: np.ndarray
    matched_gt: np.ndarray
    positive: np.ndarray
    threshold: np.ndarray

    @property
    def num_positives(self) -> np.ndarray:
        """Positives per class ``(C,)`` int64."""
        return np.bincount(self.truth.labels[self.positive], minlength=self.num_classes)

    def average_precision(
        self, true_positive: np.ndarray | None = None, ignored: np.ndarray | None = None, num_positives: np.ndarray | None = None
    ) -> np.ndarray:
        """AP per class ``(C,)`` under the protocol's summary, NaN where a class has no positives.

        By default from this matching's own flags; an error analysis passes edited ``(D,)`` flags
        (a detection turned into a true positive, or removed by marking it ignored) or other
        per-class positive counts ``(C,)``.
        """
        return _per_class_ap(
            self.found.labels,
            self.pooled_order(),
            self.true_positive if true_positive is None else true_positive,
            self.ignored if ignored is None else ignored,
            self.num_positives if num_positives is None else num_positives,
            _AP_SUMMARIES[self.protocol],
        )

    def pooled_order(self) -> np.ndarray:
        """Positions ``(D,)`` into ``found`` in the order AP reads them: by class, then score
        descending over all images; ties follow record order for ILSVRC and COCO (then input
        order), input order for VOC."""
        found = self.found
        tie_breakers = (found.position,) if self.protocol.startswith("voc") else (found.images, found.position)
        return np.lexsort(tuple(reversed(tie_breakers)) + (-found.scores, found.labels))


def match_detections(
    dataset: Dataset, detections: Detections, protocol: str = "ilsvrc", iou: float = 0.5, max_dets: int = 100
) -> Matching:
    """Match ``detections`` to ``dataset`` under ``protocol``: :func:`evaluate` without the AP.

    Arguments and errors as for :func:`evaluate`.
    """
    if protocol not in PROTOCOLS:
        raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")
    if not 0.0 <= iou <= 1.0:
        raise ValueError(f"iou must lie in [0, 1], got {iou}")
    if max_dets < 1:
        raise ValueError(f"max_dets must be at least 1, got {max_dets}")
    num_images = len(dataset)
    truth = _flatten_ground_truth(dataset)
    found = _flatten_detections(dataset, detections)
    if protocol == "ilsvrc":
        truth, found = _without_blacklisted(dataset, truth, found)

    # Evaluation order: grouped by (class, image), best score first, input order on ties.
    truth = truth.take(np.argsort(_group_keys(truth.labels, truth.images, num_images), kind="stable"))
    found = found.take(np.lexsort((found.position, -found.scores, _group_keys(found.labels, found.images, num_images))))
    if protocol == "coco50":
        found = found.take(_rank_in_group(_group_keys(found.labels, found.images, num_images)) < max_dets)

    positive, overlap_by_area, threshold, matcher = _protocol_rule(protocol, truth, iou)
    true_positive, ignored, matched_gt = _match_all(found, truth, num_images, overlap_by_area, matcher)
    if protocol == "coco50":
        # pycocotools ignores unmatched detections outside the area range
        ignored |= ~true_positive & _outside_coco_range(found.boxes)
    return Matching(protocol, float(iou), dataset.num_classes, found, truth, true_positive, ignored, matched_gt, positive, threshold)


def _protocol_rule(protocol: str, truth: _GroundTruth, iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, _BlockMatcher]:
    """What a protocol makes of the ground truth (in ``truth``'s order).

    Returns:
        ``positive (G,)``: boxes that count as positives; ``by_det_area (G,)``: boxes whose IoU
        divides by the detection's area (COCO crowd); ``threshold (G,)``: the IoU a detection
        needs on each box; the block matcher.
    """
    nothing = np.zeros(len(truth.labels), dtype=bool)
    if protocol == "ilsvrc":
        threshold = _ilsvrc_thresholds(truth.boxes, iou)
        return ~nothing, nothing, threshold, functools.partial(_match_ilsvrc, gt_threshold=threshold)
    threshold = np.full(len(truth.labels), float(iou))
    if protocol in ("voc07", "voc12"):
        ignore = truth.difficult | truth.crowd
        return ~ignore, nothing, threshold, functools.partial(_match_voc, gt_ignore=ignore, threshold=iou)
    ignore = truth.difficult | truth.crowd | _outside_coco_range(truth.boxes)
    matcher = functools.partial(_match_coco, gt_ignore=ignore, gt_crowd=truth.crowd, threshold=iou)
    return ~ignore, truth.crowd, threshold, matcher


def _result(
    classes: list[str], protocol: str, iou: float, ap: np.ndarray, num_positives: np.ndarray, num_found: np.ndarray
) -> EvaluationResult:
    """Assemble the result from per-class arrays ``(C,)``; ``ap`` is NaN where a class has no positives."""
    per_class = {name: float(ap[c]) for c, name in enumerate(classes) if num_positives[c] > 0}
    without = [name for c, name in enumerate(classes) if num_positives[c] == 0]
    if per_class:
        mean_ap = float(np.mean(list(per_class.values())))
    else:
        logger.warning("no class has ground truth under %s; reporting mAP 0", protocol)
        mean_ap = 0.0
    return EvaluationResult(
        protocol=protocol,
        iou=float(iou),
        map=mean_ap,
        per_class_ap=per_class,
        num_gt={name: int(num_positives[c]) for c, name in enumerate(classes)},
        num_det={name: int(num_found[c]) for c, name in enumerate(classes)},
        classes_without_gt=without,
    )


# ---------------------------------------------------------------------------------------------
# Input: flatten, validate, filter


def _flatten_ground_truth(dataset: Dataset) -> _GroundTruth:
    """All boxes of all records, record by record; labels are checked against the class list."""
    records = dataset.records
    counts = np.fromiter((record.num_boxes for record in records), dtype=np.int64, count=len(records))
    if counts.sum() == 0:
        empty = np.zeros((0,), dtype=np.int64)
        return _GroundTruth(np.zeros((0, 4)), empty, empty, empty.astype(bool), empty.astype(bool))
    boxes = np.concatenate([record.boxes for record in records]).astype(np.float64)
    labels = np.concatenate([record.labels for record in records])
    difficult = np.concatenate([record.difficult for record in records])
    crowd = np.concatenate([record.crowd for record in records])
    images = np.repeat(np.arange(len(records), dtype=np.int64), counts)
    bad = (labels < 0) | (labels >= dataset.num_classes)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{int(bad.sum())} ground-truth boxes have labels outside 0..{dataset.num_classes - 1}, "
            f"e.g. label {int(labels[first])} in image {records[images[first]].image_id!r}"
        )
    return _GroundTruth(boxes, labels, images, difficult, crowd)


def _flatten_detections(dataset: Dataset, detections: Detections) -> _Found:
    """Detections with image ids replaced by record positions; unknown ids or labels are errors."""
    count = len(detections)
    index = dataset.index_of()
    images = np.fromiter((index.get(image_id, -1) for image_id in detections.image_ids), dtype=np.int64, count=count)
    unknown = images < 0
    if unknown.any():
        example = detections.image_ids[np.flatnonzero(unknown)[0]]
        raise ValueError(
            f"{int(unknown.sum())} of {count} detections are on images unknown to dataset "
            f"{dataset.spec!r}, e.g. image id {example!r}"
        )
    labels = detections.labels
    bad = (labels < 0) | (labels >= dataset.num_classes)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        raise ValueError(
            f"{int(bad.sum())} of {count} detections have labels unknown to dataset {dataset.spec!r} "
            f"(valid: 0..{dataset.num_classes - 1}), e.g. label {int(labels[first])} on image "
            f"{detections.image_ids[first]!r}"
        )
    scores = detections.scores.astype(np.float64)
    if np.isnan(scores).any():
        raise ValueError(f"{int(np.isnan(scores).sum())} of {count} detections have a NaN score")
    return _Found(detections.boxes.astype(np.float64), labels, images, scores, np.arange(count, dtype=np.int64))


def _without_blacklisted(dataset: Dataset, truth: _GroundTruth, found: _Found) -> tuple[_GroundTruth, _Found]:
    """Drop the boxes and detections of blacklisted ``(image, class)`` pairs (ILSVRC)."""
    if not dataset.blacklist:
        return truth, found
    num_images = len(dataset)
    index = dataset.index_of()
    pairs = [(index[image_id], int(label)) for image_id, label in dataset.blacklist if image_id in index]
    if len(pairs) < len(dataset.blacklist):
        logger.debug("%d blacklist entries name images outside the dataset", len(dataset.blacklist) - len(pairs))
    if not pairs:
        return truth, found
    images, labels = np.array(pairs, dtype=np.int64).T
    listed = _group_keys(labels, images, num_images)
    keep_truth = ~np.isin(_group_keys(truth.labels, truth.images, num_images), listed)
    keep_found = ~np.isin(_group_keys(found.labels, found.images, num_images), listed)
    return truth.take(keep_truth), found.take(keep_found)


def coco_area(boxes: np.ndarray) -> np.ndarray:
    """``(N,)`` area ``w * h`` of ``(N, 4)`` boxes as pycocotools computes it: unclipped, in the boxes' dtype."""
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _outside_coco_range(boxes: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: :func:`coco_area` outside ``[0, 1e10]``."""
    area = coco_area(boxes)
    return (area < COCO_AREA_RANGE[0]) | (area > COCO_AREA_RANGE[1])


def _ilsvrc_thresholds(boxes: np.ndarray, iou: float) -> np.ndarray:
    """Per-box IoU thresholds ``(G,)``: ``min(iou, w*h / ((w+10) * (h+10)))``."""
    w = boxes[:, 2] - boxes[:, 0]
    h = boxes[:, 3] - boxes[:, 1]
    return np.minimum(iou, (w * h) / ((w + ILSVRC_PIXEL_TOLERANCE) * (h + ILSVRC_PIXEL_TOLERANCE)))


# ---------------------------------------------------------------------------------------------
# Grouping and padded blocks


def _group_keys(labels: np.ndarray, images: np.ndarray, num_images: int) -> np.ndarray:
    """One int64 key ``(N,)`` per (class, image) pair; sorting by it groups by class, then image."""
    return labels.astype(np.int64) * num_images + images


def _group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Start positions ``(K,)`` of the runs of equal keys in a sorted ``(N,)`` array."""
    if len(sorted_keys) == 0:
        return np.zeros((0,), dtype=np.int64)
    return np.flatnonzero(np.concatenate(([True], sorted_keys[1:] != sorted_keys[:-1])))


def _rank_in_group(sorted_keys: np.ndarray) -> np.ndarray:
    """Position ``(N,)`` of each element within its run of equal keys (0 for the first)."""
    starts = _group_starts(sorted_keys)
    counts = np.diff(np.append(starts, len(sorted_keys)))
    return np.arange(len(sorted_keys)) - np.repeat(starts, counts)


def _padded(starts: np.ndarray, counts: np.ndarray, width: int) -> np.ndarray:
    """Index rows ``(B, width)``: ``starts[b] + j`` for ``j < counts[b]``, -1 beyond."""
    columns = np.arange(width)
    return np.where(columns < counts[:, None], starts[:, None] + columns, -1)


def _padded_blocks(
    det_start: np.ndarray, det_count: np.ndarray, gt_start: np.ndarray, gt_count: np.ndarray
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Split groups that have detections and boxes into padded blocks.

    Args:
        det_start, det_count, gt_start, gt_count: ``(K,)`` ranges of each group's detections
            and ground-truth boxes in their sorted arrays.
    Yields:
        ``(det_index (B, D), gt_index (B, G))``, -1 at padding. Groups share a block only when
        their sizes round up to the same powers of two, which bounds the padding.
    """
    groups = np.flatnonzero((det_count > 0) & (gt_count > 0))
    if len(groups) == 0:
        return
    bucket = np.ceil(np.log2(det_count[groups])).astype(np.int64) * 64 + np.ceil(np.log2(gt_count[groups])).astype(np.int64)
    groups = groups[np.argsort(bucket, kind="stable")]
    bucket = np.sort(bucket, kind="stable")
    bounds = np.append(_group_starts(bucket), len(groups))
    for first, last in zip(bounds[:-1], bounds[1:]):
        members = groups[first:last]
        width_d = int(det_count[members].max())
        width_g = int(gt_count[members].max())
        rows = max(1, _BLOCK_ELEMENTS // (width_d * width_g))
        for begin in range(0, len(members), rows):
            chunk = members[begin : begin + rows]
            yield _padded(det_start[chunk], det_count[chunk], width_d), _padded(gt_start[chunk], gt_count[chunk], width_g)


def _padded_iou(
    det_boxes: np.ndarray, gt_boxes: np.ndarray, by_det_area: np.ndarray, det_index: np.ndarray, gt_index: np.ndarray
) -> np.ndarray:
    """IoU of each detection with each box of its group, -1 at padding.

    The arithmetic follows pycocotools' ``bbIou`` step for step (float64, union as
    ``area_det + area_gt - inter``) so that thresholds compare identically.

    Args:
        det_boxes: ``(D_all, 4)`` float64. gt_boxes: ``(G_all, 4)`` float64.
        by_det_area: ``(G_all,)`` bool, boxes whose overlap is divided by the detection's
            area instead of the union (COCO crowd regions).
        det_index: ``(B, D)``, gt_index: ``(B, G)`` positions, -1 at padding.
    Returns:
        ``(B, D, G)`` float64.
    """
    d = det_boxes[det_index][:, :, None, :]  # (B, D, 1, 4); padding reads the last row, masked below
    g = gt_boxes[gt_index][:, None, :, :]  # (B, 1, G, 4)
    iw = np.minimum(d[..., 2], g[..., 2]) - np.maximum(d[..., 0], g[..., 0])
    ih = np.minimum(d[..., 3], g[..., 3]) - np.maximum(d[..., 1], g[..., 1])
    overlapping = (iw > 0) & (ih > 0)
    inter = np.where(overlapping, iw * ih, 0.0)
    det_area = (d[..., 2] - d[..., 0]) * (d[..., 3] - d[..., 1])
    gt_area = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
    union = np.where(by_det_area[gt_index][:, None, :], det_area, det_area + gt_area - inter)
    iou = np.zeros(inter.shape)
    np.divide(inter, union, out=iou, where=overlapping)
    valid = (det_index >= 0)[:, :, None] & (gt_index >= 0)[:, None, :]
    return np.where(valid, iou, -1.0)


def _match_all(
    found: _Found, truth: _GroundTruth, num_images: int, by_det_area: np.ndarray, matcher: _BlockMatcher
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run ``matcher`` on every (class, image) group.

    ``found`` and ``truth`` must be sorted by group key (``found`` by score within a group).
    Returns ``(true_positive, ignored, matched_gt)``, all ``(D,)`` aligned with ``found``
    (``matched_gt``: index into ``truth``, -1 where none); detections in groups without boxes
    are false positives.
    """
    true_positive = np.zeros(len(found.labels), dtype=bool)
    ignored = np.zeros(len(found.labels), dtype=bool)
    matched_gt = np.full(len(found.labels), -1, dtype=np.int64)
    det_keys = _group_keys(found.labels, found.images, num_images)
    gt_keys = _group_keys(truth.labels, truth.images, num_images)
    det_start = _group_starts(det_keys)
    det_count = np.diff(np.append(det_start, len(det_keys)))
    gt_start = np.searchsorted(gt_keys, det_keys[det_start], side="left")
    gt_count = np.searchsorted(gt_keys, det_keys[det_start], side="right") - gt_start
    for det_index, gt_index in _padded_blocks(det_start, det_count, gt_start, gt_count):
        overlaps = _padded_iou(found.boxes, truth.boxes, by_det_area, det_index, gt_index)
        block_tp, block_ignored, column = matcher(overlaps, gt_index)
        valid = det_index >= 0
        true_positive[det_index[valid]] = block_tp[valid]
        ignored[det_index[valid]] = block_ignored[valid]
        taken = np.where(column >= 0, np.take_along_axis(gt_index, np.maximum(column, 0), axis=1), -1)
        matched_gt[det_index[valid]] = taken[valid]
    return true_positive, ignored, matched_gt


# ---------------------------------------------------------------------------------------------
# Matching rules: one function per protocol, each on one padded block


def _match_ilsvrc(overlaps: np.ndarray, gt_index: np.ndarray, gt_threshold: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ILSVRC rule: the best still-free box at or above its own threshold, first on ties.

    Args:
        overlaps: ``(B, D, G)`` IoU, -1 at padding. gt_index: ``(B, G)``, -1 at padding.
        gt_threshold: ``(G_all,)`` per-box thresholds.
    Returns:
        ``(true_positive (B, D), ignored (B, D), column (B, D))``: nothing is ignored under this
        rule; ``column`` is the box a true positive took, -1 elsewhere.
    """
    blocks, depth, _ = overlaps.shape
    # the devkit also demands a real overlap, which matters when a zero-size box has threshold 0
    qualifies = (overlaps >= gt_threshold[gt_index][:, None, :]) & (overlaps > 0)
    taken = np.zeros((blocks, overlaps.shape[2]), dtype=bool)
    true_positive = np.zeros((blocks, depth), dtype=bool)
    column = np.full((blocks, depth), -1, dtype=np.int64)
    rows = np.arange(blocks)
    for rank in range(depth):
        free = qualifies[:, rank] & ~taken
        best = np.where(free, overlaps[:, rank], -1.0).argmax(axis=1)
        hit = free[rows, best]
        true_positive[:, rank] = hit
        column[:, rank] = np.where(hit, best, -1)
        taken[rows[hit], best[hit]] = True
    return true_positive, np.zeros_like(true_positive), column


def _match_voc(
    overlaps: np.ndarray, gt_index: np.ndarray, gt_ignore: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """VOC rule: only the highest-IoU box counts (first on ties); difficult hits are ignored.

    A box can be taken once, by the highest-scored detection that picks it, so no loop is needed:
    among qualifying detections in score order, the first occurrence of each box is the hit.

    Args:
        overlaps: ``(B, D, G)`` IoU, -1 at padding. gt_index: ``(B, G)``, -1 at padding.
        gt_ignore: ``(G_all,)`` difficult (or crowd) boxes.
    Returns:
        ``(true_positive (B, D), ignored (B, D), column (B, D))``: ``column`` is the box a true
        positive took or an ignored detection hit, -1 elsewhere.
    """
    best = overlaps.argmax(axis=2)
    best_iou = np.take_along_axis(overlaps, best[..., None], axis=2)[..., 0]
    best_gt = np.take_along_axis(gt_index, best, axis=1)
    hit = (best_iou >= threshold) & (best_iou > 0)
    ignored = hit & gt_ignore[best_gt]
    claims = np.flatnonzero(hit & ~ignored)  # row-major: group by group, best score first
    _, first = np.unique(best_gt.ravel()[claims], return_index=True)
    true_positive = np.zeros(hit.size, dtype=bool)
    true_positive[claims[first]] = True
    true_positive = true_positive.reshape(hit.shape)
    return true_positive, ignored, np.where(true_positive | ignored, best, -1)


def _match_coco(
    overlaps: np.ndarray, gt_index: np.ndarray, gt_ignore: np.ndarray, gt_crowd: np.ndarray, threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """pycocotools' ``evaluateImg`` matching for one IoU threshold.

    pycocotools walks the boxes with normal ones first and keeps the *last* box whose IoU is at
    least the best so far (so ties go to the later box); once it holds a normal box it stops at
    the ignored ones. Equivalently: the last best free normal box if there is one, else the last
    best ignored box that is free or crowd (crowd regions never become taken).

    Args:
        overlaps: ``(B, D, G)`` IoU (intersection over detection area for crowd), -1 at padding.
        gt_index: ``(B, G)``, -1 at padding. gt_ignore, gt_crowd: ``(G_all,)`` bool.
    Returns:
        ``(true_positive (B, D), ignored (B, D), column (B, D))``: ignored means matched to an
        ignored box; ``column`` is the box matched, -1 where none.
    """
    blocks, depth, width = overlaps.shape
    # pycocotools starts its running best at min(t, 1 - 1e-10) so that t = 1 can still match
    over = overlaps >= min(threshold, 1 - 1e-10)
    ignore = gt_ignore[gt_index][:, None, :]
    normal = over & ~ignore
    special = over & ignore
    crowd = gt_crowd[gt_index]
    taken = np.zeros((blocks, width), dtype=bool)
    matched = np.zeros((blocks, depth), dtype=bool)
    on_ignored = np.zeros((blocks, depth), dtype=bool)
    column = np.full((blocks, depth), -1, dtype=np.int64)
    rows = np.arange(blocks)
    for rank in range(depth):
        free_normal = normal[:, rank] & ~taken
        free_special = special[:, rank] & ~(taken & ~crowd)
        has_normal = free_normal.any(axis=1)
        free = np.where(has_normal[:, None], free_normal, free_special)
        scored = np.where(free, overlaps[:, rank], -np.inf)
        best = width - 1 - scored[:, ::-1].argmax(axis=1)
        hit = free[rows, best]
        matched[:, rank] = hit
        on_ignored[:, rank] = hit & ~has_normal
        column[:, rank] = np.where(hit, best, -1)
        taken[rows[hit], best[hit]] = True
    return matched & ~on_ignored, on_ignored, column


# ---------------------------------------------------------------------------------------------
# Precision / recall summaries (their table, _AP_SUMMARIES, is at the end of the module)


def _per_class_ap(
    labels: np.ndarray,
    order: np.ndarray,
    true_positive: np.ndarray,
    ignored: np.ndarray,
    num_positives: np.ndarray,
    summary: Callable[[np.ndarray, np.ndarray, int], float],
) -> np.ndarray:
    """AP ``(C,)`` of every class (NaN where it has no positives).

    ``labels``, ``true_positive`` and ``ignored`` are ``(D,)``; ``order (D,)`` pools each
    class's detections over images in score order (:meth:`Matching.pooled_order`), and
    ``summary(tp_cumsum, fp_cumsum, num_positives)`` turns the running counts into an AP.
    Ignored detections stay in the sequence adding to neither count, which leaves every AP
    summary here unchanged (as pycocotools does).
    """
    labels = labels[order]
    hits = true_positive[order].astype(np.int64)
    misses = (~true_positive & ~ignored)[order].astype(np.int64)
    bounds = np.searchsorted(labels, np.arange(len(num_positives) + 1))
    ap = np.full(len(num_positives), np.nan)
    for c, positives in enumerate(num_positives):
        if positives > 0:
            span = slice(bounds[c], bounds[c + 1])
            tp = np.cumsum(hits[span]).astype(np.float64)
            fp = np.cumsum(misses[span]).astype(np.float64)
            ap[c] = summary(tp, fp, int(positives))
    return ap


def _voc_curve(tp: np.ndarray, fp: np.ndarray, num_positives: int) -> tuple[np.ndarray, np.ndarray]:
    """Recall and precision ``(N,)`` from cumulative counts; positions of ignored detections
    (no count added) may give 0/0, read as precision 0 which never raises a maximum."""
    recall = tp / num_positives
    precision = tp / np.maximum(tp + fp, np.finfo(np.float64).eps)
    return recall, precision


def _ap_all_point(tp: np.ndarray, fp: np.ndarray, num_positives: int) -> float:
    """VOC 2010+ AP: area under the precision envelope (precision made non-increasing in recall)."""
    recall, precision = _voc_curve(tp, fp, num_positives)
    recall = np.concatenate(([0.0], recall, [1.0]))
    precision = np.concatenate(([0.0], precision, [0.0]))
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum((recall[steps + 1] - recall[steps]) * precision[steps + 1]))


def _ap_voc07(tp: np.ndarray, fp: np.ndarray, num_positives: int) -> float:
    """VOC 2007 11-point AP: mean over the thresholds t of :data:`VOC07_RECALL_POINTS` of the best
    precision at recall >= t (0 if none).

    ``VOCevaldet.m`` sums ``ap = ap + p/11`` one threshold at a time; the mean here can differ from
    that sum in the last bit, and unlike it gives exactly 1.0 (not 1.0000000000000002) for a
    perfect curve.
    """
    recall, precision = _voc_curve(tp, fp, num_positives)
    if len(recall) == 0:
        return 0.0
    envelope = np.maximum.accumulate(precision[::-1])[::-1]
    # recall never decreases, so the best precision at recall >= t starts at the first such point
    first = np.searchsorted(recall, VOC07_RECALL_POINTS, side="left")
    reached = first < len(recall)
    return float(np.sum(envelope[first[reached]]) / len(VOC07_RECALL_POINTS))


def _ap_coco(tp: np.ndarray, fp: np.ndarray, num_positives: int) -> float:
    """pycocotools' ``accumulate``: precision envelope read at 101 recall thresholds, 0 past the end."""
    recall = tp / num_positives
    precision = tp / (fp + tp + np.spacing(1))
    precision = np.maximum.accumulate(precision[::-1])[::-1] if len(precision) else precision
    first = np.searchsorted(recall, COCO_RECALL_THRESHOLDS, side="left")
    sampled = np.zeros(len(COCO_RECALL_THRESHOLDS))
    reached = first < len(recall)
    sampled[reached] = precision[first[reached]]
    return float(np.mean(sampled))


# AP summary of each protocol: (cumulative TP (N,), cumulative FP (N,), positives) -> AP
_AP_SUMMARIES: dict[str, Callable[[np.ndarray, np.ndarray, int], float]] = {
    "ilsvrc": _ap_all_point,
    "voc07": _ap_voc07,
    "voc12": _ap_all_point,
    "coco50": _ap_coco,
}
