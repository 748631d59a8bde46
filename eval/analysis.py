"""Error analysis of detections: which mistakes cost AP, and how many points fixing each would give.

The categories follow Hoiem, Chodpathumwan and Dai, "Diagnosing error in object detectors"
(ECCV 2012), the analysis the R-CNN paper ran; the oracle APs are the "what if this error were
fixed" view. Everything starts from the protocol's own matching
(:func:`eval.detection.match_detections`), so true positives, ignored detections, positives and
the base AP are exactly those of :func:`eval.detection.evaluate`. Below, ``t`` is the IoU the
protocol requires on a box (``iou``, or ILSVRC's per-box threshold) and overlaps are taken with
every ground-truth box of the image, difficult and crowd ones included.

False positives (scored detections neither true positive nor ignored), the first kind that applies:

``duplicate`` (localisation)
    it reaches ``t`` on a box of its class that a higher-scored detection already took.
``mislocalised`` (localisation)
    its best overlap with a box of its class is at least :data:`NEAR_IOU` (0.1).
``confusion``
    it overlaps a box of another class by at least :data:`NEAR_IOU`.
``background``
    anything else.

Missed objects (positives no true positive took), the first kind that applies:

``not_covered``
    only with proposals: no proposal of the image reaches ``t`` on it (proposal-limited).
``mislocalised``
    the detection of its class that overlaps it most has IoU in ``[NEAR_IOU, t)``.
``low_score``
    otherwise: covered, but no detection of its class localises it, so the classifier scored the
    covering proposals too low for that class to survive the score threshold and NMS.

Oracle AP per class (the protocol's AP summary on edited flags, the positives unchanged; a
removed detection is marked ignored, which leaves the curve as if it were absent):

``localisation``
    in score order, a localisation false positive whose best-overlapping box of its class is a
    positive nobody has taken becomes a true positive and takes it; every other localisation
    false positive (all duplicates among them) is removed.
``confusion`` / ``background``
    those false positives are removed.

Objects no proposal covers cannot be fixed by the classifier: their effect is stated as a
recall ceiling, the fraction of positives covered.

AP by object size uses COCO's area thresholds, 32^2 and 96^2 px (:data:`SIZE_RANGES`), on the
box area ``w * h``. The matching is kept: for one range, the positives are those inside it, a
true positive whose box lies outside is ignored, and an unmatched detection is ignored when its
own area lies outside (pycocotools' rule). Unlike pycocotools' ``areaRng``, nothing is re-matched.

Top-ranked detections (Hoiem's stacked plots): per class, the first ``N`` non-ignored detections
in AP order for ``N = m x positives`` with ``m`` in :data:`TOP_MULTIPLES`, counted as correct /
localisation / confusion / background.

Classes without positives have no AP and are left out (their detections are not analysed).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass

import numpy as np

from detection.core.boxes import box_iou_numpy
from detection.data.records import Dataset, Detections
from eval.detection import Matching, coco_area, match_detections
from eval.recall import best_overlap

__all__ = [
    "FP_KINDS", "MISS_KINDS", "ORACLES", "RANKED_KINDS", "SIZE_RANGES", "TOP_MULTIPLES", "NEAR_IOU",
    "ClassErrors", "ErrorAnalysis", "analyze_errors",
]

logger = logging.getLogger(__name__)

#: Hoiem's lower overlap bound for a localisation error or a confusion (below it: background).
NEAR_IOU = 0.1
#: Per-detection kinds, in this order as codes; the false-positive kinds are the middle four.
DETECTION_KINDS = ("correct", "duplicate", "mislocalised", "confusion", "background", "ignored")
FP_KINDS = ("duplicate", "mislocalised", "confusion", "background")
#: The error types an oracle fixes, and the false-positive kinds each one covers.
ORACLES: dict[str, tuple[str, ...]] = {
    "localisation": ("duplicate", "mislocalised"),
    "confusion": ("confusion",),
    "background": ("background",),
}
MISS_KINDS = ("not_covered", "mislocalised", "low_score")
#: COCO's object sizes by box area in px^2: [low, high).
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2), "large": (96.0**2, float("inf"))}
#: Top-ranked detections are counted at these multiples of a class's positives.
TOP_MULTIPLES = (0.25, 0.5, 1.0, 2.0, 4.0, 8.0)
RANKED_KINDS = ("correct", "localisation", "confusion", "background")


@dataclass
class ClassErrors:
    """The analysis of one class (see the module note for every category).

    ``num_gt`` counts positives, ``num_det`` scored detections that are not ignored, ``recall``
    the fraction of positives found at any score, ``coverage`` the fraction covered by a
    proposal (the ceiling); ``missed["not_covered"]`` and ``coverage`` are None without proposals;
    ``ap_by_size[s]`` is None where the class has no positives of size ``s``; ``top_ranked`` has
    one dict per :data:`TOP_MULTIPLES` entry: ``detections`` (how many were counted, fewer than
    ``m x num_gt`` when the class has fewer) and a count per :data:`RANKED_KINDS` entry.
    """

    name: str
    num_gt: int
    num_det: int
    ap: float
    recall: float
    coverage: float | None
    false_positives: dict[str, int]
    missed: dict[str, int | None]
    oracle_ap: dict[str, float]
    ap_by_size: dict[str, float | None]
    num_gt_by_size: dict[str, int]
    top_ranked: list[dict[str, int]]

    @property
    def oracle_gain(self) -> dict[str, float]:
        """AP points each fix would add (oracle AP minus AP)."""
        return {fix: ap - self.ap for fix, ap in self.oracle_ap.items()}


@dataclass
class ErrorAnalysis:
    """Error analysis of one detections table: a :class:`ClassErrors` per class with positives."""

    dataset: str
    protocol: str
    iou: float
    with_proposals: bool
    classes: list[ClassErrors]
    classes_without_gt: list[str]

    @property
    def map(self) -> float:
        return _mean([c.ap for c in self.classes])

    def oracle_map(self) -> dict[str, float]:
        """mAP with each error type fixed (mean of the per-class oracle APs)."""
        return {fix: _mean([c.oracle_ap[fix] for c in self.classes]) for fix in ORACLES}

    def map_by_size(self) -> dict[str, float | None]:
        """Mean AP per size over the classes with positives of that size (None if none has)."""
        values = {size: [c.ap_by_size[size] for c in self.classes if c.ap_by_size[size] is not None] for size in SIZE_RANGES}
        return {size: _mean(v) if v else None for size, v in values.items()}

    def totals(self) -> dict[str, dict[str, int | None]]:
        """False positives and missed objects summed over classes."""
        missed = {kind: None if not self.with_proposals and kind == "not_covered" else sum(c.missed[kind] or 0 for c in self.classes) for kind in MISS_KINDS}
        return {"false_positives": {kind: sum(c.false_positives[kind] for c in self.classes) for kind in FP_KINDS}, "missed": missed}

    def pooled_top_ranked(self) -> list[dict[str, int]]:
        """The top-ranked counts summed over classes, per multiple."""
        keys = ("detections",) + RANKED_KINDS
        return [{key: sum(c.top_ranked[j][key] for c in self.classes) for key in keys} for j in range(len(TOP_MULTIPLES))]

    def to_json(self) -> dict[str, object]:
        """JSON-ready: settings, definitions' thresholds, means, totals and every class."""
        return {
            "dataset": self.dataset,
            "protocol": self.protocol,
            "iou": self.iou,
            "with_proposals": self.with_proposals,
            "near_iou": NEAR_IOU,
            "size_ranges_px2": {size: [low, None if high == float("inf") else high] for size, (low, high) in SIZE_RANGES.items()},
            "top_multiples": list(TOP_MULTIPLES),
            "map": self.map,
            "oracle_map": self.oracle_map(),
            "map_by_size": self.map_by_size(),
            "totals": self.totals(),
            "top_ranked_pooled": self.pooled_top_ranked(),
            "classes": {c.name: {**asdict(c), "oracle_gain": c.oracle_gain} for c in self.classes},
            "classes_without_gt": list(self.classes_without_gt),
        }


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else 0.0


def analyze_errors(
    dataset: Dataset,
    detections: Detections,
    protocol: str = "ilsvrc",
    iou: float = 0.5,
    max_dets: int = 100,
    proposals: Mapping[str, np.ndarray] | None = None,
) -> ErrorAnalysis:
    """Classify every false positive and missed object, and compute the oracle and size APs.

    Args:
        dataset, detections, protocol, iou, max_dets: as for :func:`eval.detection.evaluate`
            (and the same errors for unknown images or labels).
        proposals: image id -> ``(P, 4)`` proposal boxes; images absent have none. Without it
            missed objects are not split by coverage.
    """
    matching = match_detections(dataset, detections, protocol, iou, max_dets)
    overlaps = _overlaps(matching)
    kinds = _detection_kinds(matching, overlaps)
    covered = None if proposals is None else _covered(dataset, matching, proposals)
    taken = _taken(matching)
    misses = _miss_kinds(matching, taken, overlaps.gt_best_iou, covered)
    oracle = {fix: matching.average_precision(*_oracle_flags(matching, taken, kinds, overlaps.same_gt, ORACLES[fix])) for fix in ORACLES}
    by_size = _ap_by_size(matching)
    top = _top_ranked(matching, kinds)
    base = matching.average_precision()
    num_positives = matching.num_positives
    classes, without = [], []
    for c, name in enumerate(dataset.classes):
        if num_positives[c] == 0:
            without.append(name)
            continue
        gt_mine = (matching.truth.labels == c) & matching.positive
        det_mine = (matching.found.labels == c) & ~matching.ignored
        classes.append(
            ClassErrors(
                name=name,
                num_gt=int(num_positives[c]),
                num_det=int(det_mine.sum()),
                ap=float(base[c]),
                recall=float((gt_mine & taken).sum() / num_positives[c]),
                coverage=None if covered is None else float((gt_mine & covered).sum() / num_positives[c]),
                false_positives={kind: int((det_mine & (kinds == DETECTION_KINDS.index(kind))).sum()) for kind in FP_KINDS},
                missed={kind: None if covered is None and kind == "not_covered" else int((gt_mine & (misses == MISS_KINDS.index(kind))).sum()) for kind in MISS_KINDS},
                oracle_ap={fix: float(oracle[fix][c]) for fix in ORACLES},
                ap_by_size={size: None if np.isnan(ap[c]) else float(ap[c]) for size, (ap, _) in by_size.items()},
                num_gt_by_size={size: int(counts[c]) for size, (_, counts) in by_size.items()},
                top_ranked=[{"detections": int(row.sum()), **{k: int(n) for k, n in zip(RANKED_KINDS, row)}} for row in top[c]],
            )
        )
    logger.debug(
        "%s: %d detections, %d false positives, %d missed objects analysed",
        protocol, len(kinds), int(np.isin(kinds, [DETECTION_KINDS.index(k) for k in FP_KINDS]).sum()), int((misses >= 0).sum()),
    )
    return ErrorAnalysis(dataset.spec, protocol, float(iou), covered is not None, classes, without)


# ---------------------------------------------------------------------------------------------
# Overlaps and kinds


@dataclass
class _Overlaps:
    """Per detection ``(D,)``: best IoU with a box of its class (``same_iou``) and that box
    (``same_gt``, index into ``truth``, -1 if none), whether it reaches the threshold of a box of
    its class (``reaches``), best IoU with a box of another class (``other_iou``). Per box
    ``(G,)``: best IoU of a detection of its class (``gt_best_iou``)."""

    same_iou: np.ndarray
    same_gt: np.ndarray
    reaches: np.ndarray
    other_iou: np.ndarray
    gt_best_iou: np.ndarray


def _by_image(images: np.ndarray, num_images: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order (N,), bounds (num_images + 1,))``: rows of image ``i`` are ``order[bounds[i]:bounds[i+1]]``."""
    order = np.argsort(images, kind="stable")
    return order, np.searchsorted(images[order], np.arange(num_images + 1))


def _overlaps(matching: Matching) -> _Overlaps:
    """Every detection against every box of its image, one image at a time."""
    found, truth = matching.found, matching.truth
    num_det, num_gt = len(found.labels), len(truth.labels)
    result = _Overlaps(np.zeros(num_det), np.full(num_det, -1), np.zeros(num_det, bool), np.zeros(num_det), np.zeros(num_gt))
    num_images = int(max(found.images.max(initial=-1), truth.images.max(initial=-1))) + 1
    det_order, det_bounds = _by_image(found.images, num_images)
    gt_order, gt_bounds = _by_image(truth.images, num_images)
    for image in np.intersect1d(found.images, truth.images):
        dets = det_order[det_bounds[image] : det_bounds[image + 1]]
        gts = gt_order[gt_bounds[image] : gt_bounds[image + 1]]
        iou = box_iou_numpy(found.boxes[dets], truth.boxes[gts])  # (d, g)
        same = found.labels[dets][:, None] == truth.labels[gts][None, :]
        same_iou = np.where(same, iou, -1.0)
        best = same_iou.argmax(axis=1)
        has_same = same.any(axis=1)
        result.same_iou[dets] = np.where(has_same, same_iou[np.arange(len(dets)), best], 0.0)
        result.same_gt[dets] = np.where(has_same, gts[best], -1)
        result.reaches[dets] = (same & (iou >= matching.threshold[gts]) & (iou > 0)).any(axis=1)
        result.other_iou[dets] = np.where(same, 0.0, iou).max(axis=1)
        result.gt_best_iou[gts] = np.where(same, iou, 0.0).max(axis=0)
    return result


def _detection_kinds(matching: Matching, overlaps: _Overlaps) -> np.ndarray:
    """Code ``(D,)`` into :data:`DETECTION_KINDS` of every detection in ``matching.found``."""
    code = DETECTION_KINDS.index
    kinds = np.full(len(matching.found.labels), code("background"))
    # from the last rule to the first, so that the first rule that applies wins
    kinds[overlaps.other_iou >= NEAR_IOU] = code("confusion")
    kinds[overlaps.same_iou >= NEAR_IOU] = code("mislocalised")
    kinds[overlaps.reaches] = code("duplicate")
    kinds[matching.ignored] = code("ignored")
    kinds[matching.true_positive] = code("correct")
    return kinds


def _taken(matching: Matching) -> np.ndarray:
    """``(G,)`` bool: boxes a true positive took."""
    taken = np.zeros(len(matching.truth.labels), dtype=bool)
    taken[matching.matched_gt[matching.true_positive]] = True
    return taken


def _covered(dataset: Dataset, matching: Matching, proposals: Mapping[str, np.ndarray]) -> np.ndarray:
    """``(G,)`` bool: some proposal of the box's image reaches the box's threshold."""
    truth = matching.truth
    covered = np.zeros(len(truth.labels), dtype=bool)
    order, bounds = _by_image(truth.images, len(dataset))
    for image in np.unique(truth.images):
        gts = order[bounds[image] : bounds[image + 1]]
        boxes = proposals.get(dataset.records[image].image_id, np.zeros((0, 4)))
        best = best_overlap(truth.boxes[gts], boxes)
        covered[gts] = (best >= matching.threshold[gts]) & (best > 0)
    return covered


def _miss_kinds(matching: Matching, taken: np.ndarray, gt_best_iou: np.ndarray, covered: np.ndarray | None) -> np.ndarray:
    """Code ``(G,)`` into :data:`MISS_KINDS` of every missed positive (not ``taken``), -1 for the others."""
    code = MISS_KINDS.index
    missed = matching.positive & ~taken
    kinds = np.full(len(missed), -1)
    kinds[missed] = code("low_score")
    near = (gt_best_iou >= NEAR_IOU) & (gt_best_iou < matching.threshold)
    kinds[missed & near] = code("mislocalised")
    if covered is not None:
        kinds[missed & ~covered] = code("not_covered")
    return kinds


# ---------------------------------------------------------------------------------------------
# Oracles, sizes, top-ranked counts


def _oracle_flags(matching: Matching, taken: np.ndarray, kinds: np.ndarray, same_gt: np.ndarray, fixed: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    """``(true_positive, ignored)`` ``(D,)`` with the false positives of kinds ``fixed`` fixed.

    Localisation kinds may be turned into true positives (see the module note); every other
    fixed false positive is removed, i.e. marked ignored.
    """
    fix = np.isin(kinds, [DETECTION_KINDS.index(kind) for kind in fixed])
    true_positive = matching.true_positive.copy()
    if "mislocalised" in fixed:
        target = same_gt
        free = matching.positive & ~taken
        candidates = np.flatnonzero(fix & (target >= 0) & free[np.maximum(target, 0)])
        # found is in (class, image, score descending) order: the first claim on a box is the best scored
        _, first = np.unique(target[candidates], return_index=True)
        true_positive[candidates[first]] = True
    return true_positive, matching.ignored | (fix & ~true_positive)


def _ap_by_size(matching: Matching) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per size range: ``(AP (C,), positives (C,))`` with the rules of the module note."""
    gt_area, det_area = coco_area(matching.truth.boxes), coco_area(matching.found.boxes)
    tp, ignored, matched = matching.true_positive, matching.ignored, matching.matched_gt
    result = {}
    for size, (low, high) in SIZE_RANGES.items():
        gt_in = (gt_area >= low) & (gt_area < high)
        det_in = (det_area >= low) & (det_area < high)
        tp_in = tp & gt_in[np.maximum(matched, 0)]
        ignored_in = ignored | (tp & ~tp_in) | (~tp & ~ignored & ~det_in)
        positives = np.bincount(matching.truth.labels[matching.positive & gt_in], minlength=matching.num_classes)
        result[size] = (matching.average_precision(tp_in, ignored_in, positives), positives)
    return result


def _top_ranked(matching: Matching, kinds: np.ndarray) -> np.ndarray:
    """Counts ``(C, len(TOP_MULTIPLES), len(RANKED_KINDS))`` among each class's top-ranked detections."""
    fix_of = {kind: fix for fix, kinds in ORACLES.items() for kind in kinds}  # duplicate -> localisation, ...
    group_of_kind = np.array([-1 if kind == "ignored" else RANKED_KINDS.index(fix_of.get(kind, kind)) for kind in DETECTION_KINDS])
    order = matching.pooled_order()
    order = order[~matching.ignored[order]]
    labels, groups = matching.found.labels[order], group_of_kind[kinds[order]]
    bounds = np.searchsorted(labels, np.arange(matching.num_classes + 1))
    counts = np.zeros((matching.num_classes, len(TOP_MULTIPLES), len(RANKED_KINDS)), dtype=np.int64)
    for c, positives in enumerate(matching.num_positives):
        mine = groups[bounds[c] : bounds[c + 1]]
        for j, multiple in enumerate(TOP_MULTIPLES):
            top = max(1, int(round(multiple * positives)))
            counts[c, j] = np.bincount(mine[:top], minlength=len(RANKED_KINDS))
    return counts
