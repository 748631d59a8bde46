"""Tests for eval.detection: coco50 against pycocotools, every ILSVRC / VOC rule by hand."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from detection.core.boxes import box_iou_numpy
from detection.data.records import Dataset, Detections, ImageRecord
from eval.detection import PROTOCOLS, EvaluationResult, evaluate


def _no_images(record: ImageRecord) -> np.ndarray:
    raise AssertionError("the evaluator must not decode images")


def make_dataset(records: list[ImageRecord], classes: list[str], blacklist: frozenset = frozenset()) -> Dataset:
    return Dataset(spec="test", classes=classes, records=records, image_loader=_no_images, blacklist=blacklist)


def make_detections(rows: list[tuple[str, int, float, list[float]]]) -> Detections:
    """Detections from ``(image_id, label, score, box)`` rows."""
    if not rows:
        return Detections.empty()
    ids, labels, scores, boxes = zip(*rows)
    return Detections(np.array(ids, dtype=object), np.array(labels), np.array(scores), np.array(boxes))


# ---------------------------------------------------------------------------------------------
# pycocotools reference


class _CocoEvalWithIgnore(COCOeval):
    """COCOeval that honours an annotation's ``ignore`` field, which pycocotools' ``_prepare``
    overwrites with ``iscrowd``: this is how our coco50 treats ``difficult`` boxes."""

    def _prepare(self) -> None:
        super()._prepare()
        for boxes in self._gts.values():
            for gt in boxes:
                gt["ignore"] = int(gt["ignore"] or gt["difficult"])


def coco_inputs(dataset: Dataset, detections: Detections) -> tuple[dict, list[dict]]:
    """The same records as a COCO ground-truth dict and a COCO results list.

    Image ids are record positions + 1 (so the sorted image ids follow record order), category
    ids are label + 1, annotation ids start at 1, boxes go in as ``[x, y, w, h]`` computed in
    float64 (exact for float32 corners).
    """
    annotations = []
    for i, record in enumerate(dataset.records):
        for box, label, difficult, crowd in zip(record.boxes, record.labels, record.difficult, record.crowd):
            x1, y1, x2, y2 = (float(v) for v in box)
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": int(label) + 1,
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": int(crowd),
                    "difficult": int(difficult),
                }
            )
    truth = {
        "images": [{"id": i + 1, "width": r.width, "height": r.height} for i, r in enumerate(dataset.records)],
        "categories": [{"id": c + 1, "name": name} for c, name in enumerate(dataset.classes)],
        "annotations": annotations,
    }
    position = dataset.index_of()
    results = [
        {
            "image_id": position[image_id] + 1,
            "category_id": int(label) + 1,
            "bbox": [float(box[0]), float(box[1]), float(box[2]) - float(box[0]), float(box[3]) - float(box[1])],
            "score": float(score),
        }
        for image_id, label, score, box in zip(detections.image_ids, detections.labels, detections.scores, detections.boxes)
    ]
    return truth, results


def ap_from_precision(precision: np.ndarray, classes: list[str]) -> tuple[dict[str, float], float]:
    """Per-class AP and mAP from COCO's ``precision[0, :, :, 0, 0]`` ``(R, K)`` (-1: class without gt).

    pycocotools reports -1 when no class has ground truth; our evaluator reports 0 then.
    """
    per_class = {name: float(np.mean(precision[:, k])) for k, name in enumerate(classes) if precision[0, k] > -1}
    return per_class, float(np.mean(precision[precision > -1])) if per_class else 0.0


def coco_reference(
    dataset: Dataset, detections: Detections, iou: float = 0.5, max_dets: int = 100
) -> tuple[dict[str, float], float]:
    """Per-class AP and the mAP that pycocotools reports for the same records."""
    truth_dict, results = coco_inputs(dataset, detections)
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = truth_dict
        truth.createIndex()
        evaluator = _CocoEvalWithIgnore(truth, truth.loadRes(results), "bbox")
        evaluator.params.iouThrs = np.array([iou])
        evaluator.params.maxDets = [max_dets]
        evaluator.params.areaRng = [[0**2, 1e5**2]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
    return ap_from_precision(evaluator.eval["precision"][0, :, :, 0, 0], dataset.classes)


# ---------------------------------------------------------------------------------------------
# Random cases


def random_case(seed: int) -> tuple[Dataset, Detections, int]:
    """A small random problem that visits the awkward corners of the COCO rules.

    Integer corners and repeated boxes give exact IoU ties; rounded scores give score ties;
    crowd and difficult flags, empty images, images with boxes and no detections, a class with
    no boxes and a class with no detections all occur across seeds.
    """
    rng = np.random.default_rng(seed)
    num_classes = int(rng.integers(2, 5))
    classes = [f"c{k}" for k in range(num_classes)]
    boxed_classes = num_classes - 1 if seed % 3 == 0 else num_classes  # the last class may have no boxes
    found_classes = num_classes - 1 if seed % 4 == 1 else num_classes  # ... or no detections
    integer = seed % 2 == 0
    records, rows = [], []
    for i in range(int(rng.integers(1, 7))):
        image_id = f"img{i}"
        count = int(rng.integers(0, 7))
        corners = rng.uniform(0, 60, size=(count, 2))
        sizes = rng.uniform(4, 40, size=(count, 2))
        boxes = np.concatenate([corners, corners + sizes], axis=1)
        if integer:
            boxes = np.round(boxes)
        if count > 1 and rng.random() < 0.3:
            boxes[-1] = boxes[0]  # a duplicate box: equal IoUs
        labels = rng.integers(0, boxed_classes, size=count)
        crowd = rng.random(count) < 0.15
        difficult = (rng.random(count) < 0.15) if seed % 5 == 2 else np.zeros(count, dtype=bool)
        records.append(ImageRecord(image_id, None, 100, 100, boxes, labels, difficult, crowd))
        if rng.random() < 0.15:
            continue  # boxes, but no detections
        for box, label in zip(boxes, labels):
            for _ in range(int(rng.integers(0, 4))):
                jitter = rng.normal(0, 2.5, size=4) if rng.random() < 0.8 else np.zeros(4)
                det = box + (np.round(jitter) if integer else jitter)
                rows.append((image_id, int(min(label, found_classes - 1)), float(rng.random()), det.tolist()))
        for _ in range(int(rng.integers(0, 5))):
            corner = rng.uniform(0, 80, size=2)
            det = np.concatenate([corner, corner + rng.uniform(3, 40, size=2)])
            rows.append((image_id, int(rng.integers(0, found_classes)), float(rng.random()), det.tolist()))
    rng.shuffle(rows)
    if seed % 2 == 1:
        rows = [(i, l, round(s, 1), b) for i, l, s, b in rows]  # many score ties
    max_dets = 3 if seed % 7 == 3 else 100
    return make_dataset(records, classes), make_detections(rows), max_dets


@pytest.mark.parametrize("seed", range(40))
def test_coco50_matches_pycocotools(seed: int) -> None:
    dataset, detections, max_dets = random_case(seed)
    if len(detections) == 0:
        pytest.skip("pycocotools cannot load an empty result list")
    expected_per_class, expected_map = coco_reference(dataset, detections, max_dets=max_dets)
    result = evaluate(dataset, detections, "coco50", max_dets=max_dets)
    assert result.per_class_ap.keys() == expected_per_class.keys()
    for name, ap in expected_per_class.items():
        assert result.per_class_ap[name] == pytest.approx(ap, abs=1e-6), name
    assert result.map == pytest.approx(expected_map, abs=1e-6)


@pytest.mark.parametrize("iou", [0.3, 0.75, 0.95])
def test_coco50_matches_pycocotools_at_other_thresholds(iou: float) -> None:
    for seed in (2, 5, 8):
        dataset, detections, max_dets = random_case(seed)
        expected_per_class, expected_map = coco_reference(dataset, detections, iou=iou, max_dets=max_dets)
        result = evaluate(dataset, detections, "coco50", iou=iou, max_dets=max_dets)
        assert result.per_class_ap == pytest.approx(expected_per_class, abs=1e-6)
        assert result.map == pytest.approx(expected_map, abs=1e-6)


def test_coco50_matches_faster_coco_eval() -> None:
    faster = pytest.importorskip("faster_coco_eval")
    for seed in (0, 4, 6):  # no difficult boxes in these: faster_coco_eval is left to its own ignore rule
        dataset, detections, _ = random_case(seed)
        truth_dict, results = coco_inputs(dataset, detections)
        truth = faster.COCO(truth_dict)
        evaluator = faster.COCOeval_faster(truth, truth.loadRes(results), "bbox", print_function=lambda *args: None)
        evaluator.params.iouThrs = np.array([0.5])
        evaluator.params.maxDets = [100]
        evaluator.params.areaRng = [[0**2, 1e5**2]]
        evaluator.params.areaRngLbl = ["all"]
        evaluator.evaluate()
        evaluator.accumulate()
        precision = np.asarray(evaluator.eval["precision"])[0, :, :, 0, 0]
        expected_per_class, expected_map = ap_from_precision(precision, dataset.classes)
        result = evaluate(dataset, detections, "coco50")
        assert result.per_class_ap == pytest.approx(expected_per_class, abs=1e-6)
        assert result.map == pytest.approx(expected_map, abs=1e-6)


# ---------------------------------------------------------------------------------------------
# Hand-worked rules


def test_voc_duplicate_detection_is_a_false_positive() -> None:
    dataset = make_dataset([ImageRecord("a", None, 50, 50, [[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0])], ["x"])
    detections = make_detections(
        [("a", 0, 0.9, [0, 0, 10, 10]), ("a", 0, 0.8, [0, 0, 10, 10]), ("a", 0, 0.7, [20, 20, 30, 30])]
    )
    # TP, FP (duplicate), TP: recall .5 .5 1, precision 1 .5 2/3 -> .5 * 1 + .5 * 2/3 = 5/6
    assert evaluate(dataset, detections, "voc12").map == pytest.approx(5 / 6, abs=1e-12)
    assert evaluate(dataset, detections, "ilsvrc").map == pytest.approx(5 / 6, abs=1e-12)


def test_voc_and_ilsvrc_differ_when_the_best_box_is_taken() -> None:
    # two 100x100 boxes 10 px apart; the second detection overlaps A best (0.923, taken) and B at 0.887
    dataset = make_dataset([ImageRecord("a", None, 200, 200, [[0, 0, 100, 100], [0, 10, 100, 110]], [0, 0])], ["x"])
    detections = make_detections([("a", 0, 0.9, [0, 0, 100, 100]), ("a", 0, 0.8, [0, 4, 100, 104])])
    iou = box_iou_numpy(detections.boxes[1:], dataset.records[0].boxes)[0]
    assert iou[0] > iou[1] > 0.5
    assert evaluate(dataset, detections, "voc12").map == pytest.approx(0.5)  # TP, FP
    assert evaluate(dataset, detections, "ilsvrc").map == pytest.approx(1.0)  # TP, TP (second-best box)
    assert evaluate(dataset, detections, "coco50").map == pytest.approx(1.0)  # COCO also takes the free box


def test_equal_iou_ties_go_to_the_first_box_for_ilsvrc_and_voc_and_the_last_for_coco() -> None:
    # the first detection overlaps A and B equally (7500 / 12500 = 0.6 each); the second fits only A
    # (boxes of 100 px, so the ILSVRC threshold is the plain 0.5)
    dataset = make_dataset([ImageRecord("a", None, 200, 200, [[0, 0, 100, 100], [50, 0, 150, 100]], [0, 0])], ["x"])
    detections = make_detections([("a", 0, 0.9, [25, 0, 125, 100]), ("a", 0, 0.8, [0, 0, 100, 100])])
    iou = box_iou_numpy(detections.boxes, dataset.records[0].boxes)
    assert iou[0, 0] == iou[0, 1] == 0.6 and iou[1, 1] < 0.5
    # first box: the second detection finds A taken -> TP, FP
    assert evaluate(dataset, detections, "ilsvrc").map == pytest.approx(0.5)
    assert evaluate(dataset, detections, "voc12").map == pytest.approx(0.5)
    # pycocotools keeps the last of equal IoUs: the first detection takes B, the second A -> TP, TP
    expected_per_class, expected_map = coco_reference(dataset, detections)
    assert expected_map == pytest.approx(1.0)
    assert evaluate(dataset, detections, "coco50").map == pytest.approx(expected_map, abs=1e-12)


def test_iou_of_exactly_the_threshold_is_a_match() -> None:
    dataset = make_dataset([ImageRecord("a", None, 50, 50, [[0, 0, 10, 10]], [0])], ["x"])
    on_threshold = make_detections([("a", 0, 0.9, [0, 0, 10, 5])])
    assert box_iou_numpy(on_threshold.boxes, dataset.records[0].boxes)[0, 0] == 0.5
    for protocol in PROTOCOLS:
        assert evaluate(dataset, on_threshold, protocol, iou=0.5).map == pytest.approx(1.0), protocol
    below = make_detections([("a", 0, 0.9, [0, 0, 10, 4.99])])
    for protocol in ("voc07", "voc12", "coco50"):
        assert evaluate(dataset, below, protocol).map == 0.0, protocol


def test_ilsvrc_small_object_threshold() -> None:
    # a 10x10 box has threshold min(0.5, 100 / (20 * 20)) = 0.25; this detection has IoU 30/100 = 0.3
    dataset = make_dataset([ImageRecord("a", None, 50, 50, [[0, 0, 10, 10]], [0])], ["x"])
    detections = make_detections([("a", 0, 0.9, [0, 0, 10, 3])])
    assert box_iou_numpy(detections.boxes, dataset.records[0].boxes)[0, 0] == pytest.approx(0.3)
    assert evaluate(dataset, detections, "ilsvrc").map == pytest.approx(1.0)
    assert evaluate(dataset, detections, "voc12").map == 0.0
    # at IoU 0.2, below 0.25, it misses under ILSVRC too
    lower = make_detections([("a", 0, 0.9, [0, 0, 10, 2])])
    assert evaluate(dataset, lower, "ilsvrc").map == 0.0


def test_blacklist_removes_boxes_and_detections_of_the_pair() -> None:
    records = [
        ImageRecord("a", None, 50, 50, [[0, 0, 10, 10], [30, 30, 40, 40]], [0, 1]),
        ImageRecord("b", None, 50, 50, [[0, 0, 10, 10]], [0]),
    ]
    detections = make_detections(
        [
            ("a", 0, 0.9, [20, 20, 30, 30]),  # a miss in the blacklisted pair
            ("b", 0, 0.8, [0, 0, 10, 10]),
            ("a", 1, 0.7, [30, 30, 40, 40]),  # other class on the same image: kept
        ]
    )
    plain = make_dataset(records, ["x", "y"])
    listed = make_dataset(records, ["x", "y"], blacklist=frozenset({("a", 0)}))
    # without the blacklist class x is FP, TP with 2 positives: recall 0 .5, precision 0 .5 -> 0.25
    assert evaluate(plain, detections, "ilsvrc").per_class_ap["x"] == pytest.approx(0.25)
    result = evaluate(listed, detections, "ilsvrc")
    assert result.per_class_ap == {"x": 1.0, "y": 1.0}
    assert result.num_gt == {"x": 1, "y": 1}
    assert result.num_det == {"x": 1, "y": 1}
    # the other protocols ignore the blacklist
    assert evaluate(listed, detections, "voc12").per_class_ap["x"] == pytest.approx(0.25)


def test_difficult_boxes_are_neither_hits_nor_misses() -> None:
    record = ImageRecord("a", None, 50, 50, [[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], difficult=[True, False])
    dataset = make_dataset([record], ["x"])
    detections = make_detections(
        [("a", 0, 0.9, [0, 0, 10, 10]), ("a", 0, 0.8, [20, 20, 30, 30]), ("a", 0, 0.7, [40, 40, 45, 45])]
    )
    # ignored, TP, FP with one positive: recall reaches 1 at precision 1
    for protocol in ("voc07", "voc12", "coco50"):
        result = evaluate(dataset, detections, protocol)
        assert result.num_gt == {"x": 1}, protocol
        assert result.map == pytest.approx(1.0), protocol
    # ILSVRC counts every box: TP, TP, FP over two positives
    ilsvrc = evaluate(dataset, detections, "ilsvrc")
    assert ilsvrc.num_gt == {"x": 2}
    assert ilsvrc.map == pytest.approx(1.0)


def test_crowd_boxes_are_difficult_under_voc() -> None:
    record = ImageRecord("a", None, 50, 50, [[0, 0, 10, 10], [20, 20, 30, 30]], [0, 0], crowd=[True, False])
    dataset = make_dataset([record], ["x"])
    detections = make_detections([("a", 0, 0.9, [0, 0, 10, 10]), ("a", 0, 0.8, [20, 20, 30, 30])])
    result = evaluate(dataset, detections, "voc12")
    assert result.num_gt == {"x": 1}
    assert result.map == pytest.approx(1.0)


def test_coco_crowd_region_absorbs_many_detections() -> None:
    record = ImageRecord("a", None, 50, 50, [[0, 0, 40, 40], [45, 45, 50, 50]], [0, 0], crowd=[True, False])
    dataset = make_dataset([record], ["x"])
    # three small detections inside the crowd region: IoU by detection area is 1, all ignored
    detections = make_detections(
        [
            ("a", 0, 0.9, [0, 0, 5, 5]),
            ("a", 0, 0.8, [10, 10, 15, 15]),
            ("a", 0, 0.7, [20, 20, 25, 25]),
            ("a", 0, 0.6, [45, 45, 50, 50]),
        ]
    )
    assert evaluate(dataset, detections, "coco50").map == pytest.approx(1.0)
    assert evaluate(dataset, detections, "voc12").map == pytest.approx(0.25)  # FP FP FP TP, one positive


def test_eleven_point_and_all_point_ap_by_hand() -> None:
    gt = [[0, 0, 10, 10], [20, 0, 30, 10], [40, 0, 50, 10], [60, 0, 70, 10]]
    dataset = make_dataset([ImageRecord("a", None, 100, 100, gt, [0, 0, 0, 0])], ["x"])
    far = [80, 80, 90, 90]
    detections = make_detections(
        [
            ("a", 0, 0.9, gt[0]),  # TP  recall .25 precision 1
            ("a", 0, 0.8, far),  # FP  .25  1/2
            ("a", 0, 0.7, gt[1]),  # TP  .50  2/3
            ("a", 0, 0.6, far),  # FP  .50  1/2
            ("a", 0, 0.5, far),  # FP  .50  2/5
            ("a", 0, 0.4, gt[2]),  # TP  .75  1/2   (gt[3] is never found)
        ]
    )
    # all-point: envelope 1 on (0, .25], 2/3 on (.25, .5], 1/2 on (.5, .75], 0 after
    #   .25 * 1 + .25 * 2/3 + .25 * 1/2 = 13/24
    assert evaluate(dataset, detections, "voc12").map == pytest.approx(13 / 24, abs=1e-12)
    # 11-point: t = 0, .1, .2 -> 1; t = .3, .4, .5 -> 2/3; t = .6, .7 -> 1/2; t = .8, .9, 1 -> 0
    #   (3 * 1 + 3 * 2/3 + 2 * 1/2) / 11 = 6/11
    assert evaluate(dataset, detections, "voc07").map == pytest.approx(6 / 11, abs=1e-12)


# ---------------------------------------------------------------------------------------------
# VOC07 at the devkit's thresholds: recall landing exactly on k/10

# VOCevaldet.m's ``for t=0:0.1:1`` as MATLAB evaluates the colon (first half 0 + k*0.1, second
# half 1 - (10-k)*0.1, middle 0.5), typed out rather than computed.
DEVKIT_THRESHOLDS = [0.0, 0.1, 0.2, 0.30000000000000004, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0]


def devkit_voc07_ap(outcomes: str, npos: int, thresholds: list[float] = DEVKIT_THRESHOLDS) -> float:
    """``VOCevaldet.m``'s 11-point AP restated from a score-ordered outcome string.

    ``T`` true positive, ``F`` false positive, ``I`` ignored (a difficult box: tp and fp both 0).
    As in the devkit: ``tp=cumsum(tp); fp=cumsum(fp); rec=tp/npos; prec=tp./(fp+tp)``, then for
    each t ``p=max(prec(rec>=t))``, 0 if empty, ``ap=ap+p/11``. MATLAB's max skips the NaN of 0/0.
    """
    tp = np.cumsum([c == "T" for c in outcomes], dtype=np.float64)
    fp = np.cumsum([c == "F" for c in outcomes], dtype=np.float64)
    rec = tp / npos
    with np.errstate(invalid="ignore"):
        prec = tp / (fp + tp)
    ap = 0.0
    for t in thresholds:
        p = prec[(rec >= t) & ~np.isnan(prec)]
        ap = ap + (p.max() if p.size else 0.0) / 11
    return ap


def outcome_case(npos: int, outcomes: str) -> tuple[Dataset, Detections]:
    """One image, ``npos`` disjoint boxes of class ``x``, detections in score order: ``T`` on the next
    unfound box, ``F`` on empty ground."""
    boxes = [[20.0 * i, 0.0, 20.0 * i + 10.0, 10.0] for i in range(npos)]
    dataset = make_dataset([ImageRecord("a", None, 20 * npos, 100, boxes, [0] * npos)], ["x"])
    rows, found = [], 0
    for rank, outcome in enumerate(outcomes):
        box = boxes[found] if outcome == "T" else [0.0, 50.0, 10.0, 60.0]
        found += outcome == "T"
        rows.append(("a", 0, 1.0 - rank / 100, box))
    return dataset, make_detections(rows)


def test_devkit_thresholds_are_matlabs_colon() -> None:
    from eval.detection import VOC07_RECALL_POINTS, matlab_colon

    assert VOC07_RECALL_POINTS.tolist() == DEVKIT_THRESHOLDS
    # 0:0.1:0.3 has n = 3: 0, 0.1 from the left; 0.3 - 0.1 = 0.19999999999999998 and 0.3 from the right
    assert matlab_colon(0.0, 0.1, 0.3).tolist() == [0.0, 0.1, 0.3 - 0.1, 0.3]
    assert matlab_colon(0.0, 0.1, 0.3)[2] != 0.2
    # 0:0.1:0.4 has n = 4: 0.4 - 0.1 = 0.30000000000000004 on the right, middle (0 + 0.4) / 2 = 0.2
    assert matlab_colon(0.0, 0.1, 0.4).tolist() == [0.0, 0.1, 0.2, 0.30000000000000004, 0.4]


@pytest.mark.parametrize(
    "npos, outcomes, expected",
    [
        # 3/10: TTT reaches recall 3/10 = 0.29999999999999999 < 0.30000000000000004 at precision 1;
        # FFF, then T: recall 0.4 at 4/7. t = 0, .1, .2 -> 1; t = .3+ and .4 -> 4/7; t >= .5 -> 0.
        #   (3 + 2 * 4/7) / 11 = 29/77 = 0.3766   (thresholds k/10 gave (4 + 4/7) / 11 = 32/77 = 0.4156)
        (10, "TTTFFFT", 29 / 77),
        # 6/20 = 0.3 too: six T (precision 1), six F, T at recall 7/20 = .35, precision 7/13.
        # t = 0, .1, .2 -> 1; t = .3+ -> 7/13; t >= .4 -> 0.
        #   (3 + 7/13) / 11 = 46/143 = 0.3217   (thresholds k/10: 4/11 = 0.3636)
        (20, "TTTTTTFFFFFFT", 46 / 143),
        # 6/10 = 0.6 reaches the devkit's 0.6 (1 - 4*0.1): six T, four F, T at recall .7, precision 7/11.
        # t = 0 .. .6 (7 points) -> 1; t = .7 -> 7/11; t >= .8 -> 0.
        #   (7 + 7/11) / 11 = 84/121 = 0.6942   (np.arange(0., 1.1, 0.1): (6 + 7/11) / 11 = 73/121 = 0.6033)
        (10, "TTTTTTFFFFT", 84 / 121),
        # 7/10 = 0.7 reaches the devkit's 0.7 (1 - 3*0.1): seven T, three F, T at recall .8, precision 8/11.
        # t = 0 .. .7 (8 points) -> 1; t = .8 -> 8/11; t >= .9 -> 0.
        #   (8 + 8/11) / 11 = 96/121 = 0.7934   (np.arange: (7 + 2 * 8/11) / 11 = 93/121 = 0.7686)
        (10, "TTTTTTTFFFT", 96 / 121),
        # 14/20 = 0.7: fourteen T, six F, T at recall .75, precision 15/21 = 5/7.
        # t = 0 .. .7 (8 points) -> 1; t >= .8 -> 0.
        #   8/11 = 0.7273   (np.arange: (7 + 5/7) / 11 = 54/77 = 0.7013)
        (20, "T" * 14 + "F" * 6 + "T", 8 / 11),
    ],
)
def test_voc07_at_exact_recall_points_by_hand(npos: int, outcomes: str, expected: float) -> None:
    dataset, detections = outcome_case(npos, outcomes)
    assert evaluate(dataset, detections, "voc07").per_class_ap["x"] == pytest.approx(expected, abs=1e-12)
    assert devkit_voc07_ap(outcomes, npos) == pytest.approx(expected, abs=1e-12)


def voc_outcome_case(seed: int) -> tuple[Dataset, Detections, dict[str, tuple[str, int]]]:
    """Random VOC case whose classes hold 10 or 20 countable boxes (plus a few difficult ones)
    over three images, with known outcomes: returns ``{class: (outcomes in score order, npos)}``.

    Every detection lies exactly on a box (IoU 1) or on empty ground (IoU 0), so its outcome is
    known without matching: ``T`` first hit on a countable box, ``F`` on empty ground or a
    countable box already found, ``I`` on a difficult box. Scores are distinct.
    """
    rng = np.random.default_rng(seed)
    classes = ["a", "b", "c"]
    per_image: list[tuple[list[list[float]], list[int], list[bool]]] = [([], [], []) for _ in range(3)]
    where: dict[int, list[tuple[int, list[float], bool]]] = {}
    for label in range(len(classes)):
        npos, difficult = int(rng.choice([10, 20])), int(rng.integers(0, 3))
        where[label] = []
        for slot in range(npos + difficult):
            image = int(rng.integers(0, 3))
            boxes, labels, flags = per_image[image]
            box = [20.0 * len(boxes), 30.0 * label, 20.0 * len(boxes) + 10.0, 30.0 * label + 10.0]
            boxes.append(box)
            labels.append(label)
            flags.append(slot >= npos)
            where[label].append((image, box, slot >= npos))
    records = [
        ImageRecord(f"img{i}", None, 2000, 200, boxes or np.zeros((0, 4)), labels, difficult=flags)
        for i, (boxes, labels, flags) in enumerate(per_image)
    ]
    dataset = make_dataset(records, classes)
    rows, expected = [], {}
    for label, name in enumerate(classes):
        countable = [(image, box) for image, box, hard in where[label] if not hard]
        hard = [(image, box) for image, box, is_hard in where[label] if is_hard]
        order = rng.permutation(len(countable))
        found, outcomes = 0, ""
        for _ in range(int(rng.integers(len(countable) // 2, 2 * len(countable)))):
            kind = rng.choice(["T", "F", "D", "I"], p=[0.55, 0.3, 0.1, 0.05])
            if kind == "T" and found < len(countable):
                image, box = countable[order[found]]
                found += 1
            elif kind == "D" and found > 0:
                image, box = countable[order[int(rng.integers(0, found))]]
                kind = "F"
            elif kind == "I" and hard:
                image, box = hard[int(rng.integers(0, len(hard)))]
            else:
                image, box, kind = int(rng.integers(0, 3)), [0.0, 150.0, 10.0, 160.0], "F"
            outcomes += kind
            rows.append((f"img{image}", label, 0.0, box))
        expected[name] = (outcomes, len(countable))
    # distinct scores, descending in the order the outcomes were planned (per class), input shuffled
    scores = np.linspace(1.0, 0.01, len(rows))
    rows = [(image, label, float(score), box) for (image, label, _, box), score in zip(rows, scores)]
    shuffled = [rows[i] for i in rng.permutation(len(rows))]
    return dataset, make_detections(shuffled), expected


def test_voc07_equals_the_devkit_rule_on_random_cases() -> None:
    arange_differs = 0
    for seed in range(40):
        dataset, detections, expected = voc_outcome_case(seed)
        result = evaluate(dataset, detections, "voc07")
        for name, (outcomes, npos) in expected.items():
            assert result.num_gt[name] == npos
            # equal up to the order of the sum (the devkit adds p/11 one threshold at a time)
            assert result.per_class_ap[name] == pytest.approx(devkit_voc07_ap(outcomes, npos), abs=1e-12), (seed, name, outcomes)
            # the cases do reach the points where the thresholds' rounding matters
            ported = devkit_voc07_ap(outcomes, npos, np.arange(0.0, 1.1, 0.1).tolist())
            arange_differs += abs(ported - result.per_class_ap[name]) > 1e-9
    assert arange_differs > 0


def test_class_without_ground_truth_is_left_out_of_the_mean() -> None:
    dataset = make_dataset([ImageRecord("a", None, 50, 50, [[0, 0, 10, 10]], [0])], ["x", "y", "z"])
    detections = make_detections([("a", 0, 0.9, [0, 0, 10, 10]), ("a", 1, 0.8, [0, 0, 10, 10])])
    for protocol in PROTOCOLS:
        result = evaluate(dataset, detections, protocol)
        # (pycocotools' precision tp / (tp + fp + eps) stops one ulp short of 1)
        assert result.per_class_ap == pytest.approx({"x": 1.0}, abs=1e-12), protocol
        assert result.classes_without_gt == ["y", "z"]
        assert result.map == pytest.approx(1.0, abs=1e-12)
        assert result.num_det == {"x": 1, "y": 1, "z": 0}


def test_empty_detections_give_zero_ap() -> None:
    dataset = make_dataset(
        [ImageRecord("a", None, 50, 50, [[0, 0, 10, 10], [5, 5, 9, 9]], [0, 1]), ImageRecord("b", None, 50, 50)], ["x", "y"]
    )
    for protocol in PROTOCOLS:
        result = evaluate(dataset, Detections.empty(), protocol)
        assert result.per_class_ap == {"x": 0.0, "y": 0.0}
        assert result.map == 0.0


def test_coco_max_dets_keeps_the_best_per_image_and_class() -> None:
    dataset = make_dataset([ImageRecord("a", None, 50, 50, [[0, 0, 10, 10]], [0])], ["x"])
    detections = make_detections([("a", 0, 0.9, [30, 30, 40, 40]), ("a", 0, 0.5, [0, 0, 10, 10])])
    assert evaluate(dataset, detections, "coco50", max_dets=1).map == 0.0
    assert evaluate(dataset, detections, "coco50", max_dets=1).num_det == {"x": 1}
    assert evaluate(dataset, detections, "coco50", max_dets=2).map == pytest.approx(0.5)


def test_result_does_not_depend_on_input_order() -> None:
    dataset, detections, _ = random_case(4)  # continuous scores: no ties
    permutation = np.random.default_rng(0).permutation(len(detections))
    for protocol in PROTOCOLS:
        shuffled = evaluate(dataset, detections.select(permutation), protocol)
        assert shuffled.to_json() == evaluate(dataset, detections, protocol).to_json(), protocol


def test_json_and_table() -> None:
    dataset = make_dataset([ImageRecord("a", None, 50, 50, [[0, 0, 10, 10]], [0])], ["x", "y"])
    result = evaluate(dataset, make_detections([("a", 0, 0.9, [0, 0, 10, 10])]), "voc07")
    assert isinstance(result, EvaluationResult)
    payload = result.to_json()
    assert set(payload) == {"protocol", "iou", "map", "per_class", "num_gt", "num_det", "classes_without_gt"}
    assert payload["per_class"] == {"x": 1.0} and payload["num_gt"] == {"x": 1, "y": 0}
    json.dumps(payload)
    table = result.format_table()
    assert table.splitlines()[-1] == "mAP: 1.0000"
    assert "x" in table and "y" in table


# ---------------------------------------------------------------------------------------------
# Bad input


def test_unknown_image_id_is_an_error() -> None:
    dataset = make_dataset([ImageRecord("a", None, 50, 50, [[0, 0, 10, 10]], [0])], ["x"])
    detections = make_detections([("a", 0, 0.9, [0, 0, 10, 10]), ("nope", 0, 0.8, [0, 0, 10, 10])])
    with pytest.raises(ValueError, match=r"1 of 2 detections .*unknown.*'nope'"):
        evaluate(dataset, detections, "voc12")


def test_unknown_label_is_an_error() -> None:
    dataset = make_dataset([ImageRecord("a", None, 50, 50, [[0, 0, 10, 10]], [0])], ["x"])
    detections = make_detections([("a", 3, 0.9, [0, 0, 10, 10])])
    with pytest.raises(ValueError, match=r"1 of 1 detections have labels .*label 3"):
        evaluate(dataset, detections, "ilsvrc")


def test_bad_arguments_are_errors() -> None:
    dataset = make_dataset([ImageRecord("a", None, 50, 50)], ["x"])
    with pytest.raises(ValueError, match="protocol"):
        evaluate(dataset, Detections.empty(), "voc2012")
    with pytest.raises(ValueError, match="iou"):
        evaluate(dataset, Detections.empty(), "voc12", iou=1.5)
