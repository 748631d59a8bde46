"""Tests for eval.analysis: every error type and oracle AP worked out by hand, and its invariants."""

from __future__ import annotations

import numpy as np
import pytest

from detection.data.datasets import load_dataset
from detection.data.records import Dataset, Detections, ImageRecord
from detection.simulate import simulate_detections
from eval.analysis import ORACLES, TOP_MULTIPLES, analyze_errors
from eval.analysis_report import format_analysis, format_summary, plot_fp_types
from eval.detection import PROTOCOLS, evaluate, match_detections

CAT, DOG = 0, 1


def _dataset(records: list[ImageRecord]) -> Dataset:
    return Dataset("hand", ["cat", "dog"], records, image_loader=lambda r: None)


def _detections(rows: list[tuple[str, int, float, list[float]]]) -> Detections:
    ids, labels, scores, boxes = zip(*rows)
    return Detections(np.array(ids, dtype=object), np.array(labels), np.array(scores), np.array(boxes, dtype=np.float32))


# Image a (100x100): g0 cat [0,0,10,10] (area 100, small), g1 dog [50,50,90,90] (1600, medium).
# Image b (200x200): g2 cat [0,0,100,100] (10000, large), g3 cat [120,120,150,150] (900, small),
#                    g4 cat [0,150,40,190] (1600, medium).
HAND_GT = [
    ImageRecord("a", None, 100, 100, [[0, 0, 10, 10], [50, 50, 90, 90]], [CAT, DOG]),
    ImageRecord("b", None, 200, 200, [[0, 0, 100, 100], [120, 120, 150, 150], [0, 150, 40, 190]], [CAT, CAT, CAT]),
]
HAND_DETECTIONS = [
    ("a", CAT, 0.90, [0, 0, 10, 10]),  # d0: IoU 1 with g0: true positive
    ("a", CAT, 0.80, [0, 0, 10, 9]),  # d1: IoU 0.9 with g0, already taken: duplicate
    ("b", CAT, 0.70, [0, 0, 100, 40]),  # d2: IoU 4000/10000 = 0.4 with g2: mislocalised
    ("b", CAT, 0.65, [0, 150, 40, 166]),  # d7: IoU 640/1600 = 0.4 with g4: mislocalised
    ("a", CAT, 0.60, [50, 50, 90, 90]),  # d3: IoU 1 with the dog g1, no cat overlap: confusion
    ("b", CAT, 0.50, [160, 0, 200, 40]),  # d4: overlaps nothing: background
    ("b", CAT, 0.30, [0, 0, 100, 100]),  # d5: IoU 1 with g2: true positive (after d2 missed it)
    ("a", DOG, 0.40, [50, 50, 90, 70]),  # d6: IoU 800/1600 = 0.5 with g1 (inclusive): true positive
]
# Proposals cover g0, g1, g2 and g4, not g3.
HAND_PROPOSALS = {
    "a": np.array([[0, 0, 10, 10], [50, 50, 90, 90]], np.float32),
    "b": np.array([[0, 0, 100, 100], [0, 150, 40, 190], [0, 0, 30, 30]], np.float32),
}


def _hand(proposals: dict | None = HAND_PROPOSALS):
    analysis = analyze_errors(_dataset(HAND_GT), _detections(HAND_DETECTIONS), "voc12", 0.5, proposals=proposals)
    return {c.name: c for c in analysis.classes}, analysis


def test_false_positive_and_miss_types_by_hand():
    classes, analysis = _hand()
    cat, dog = classes["cat"], classes["dog"]
    assert cat.false_positives == {"duplicate": 1, "mislocalised": 2, "confusion": 1, "background": 1}
    assert dog.false_positives == {"duplicate": 0, "mislocalised": 0, "confusion": 0, "background": 0}
    assert (cat.num_gt, cat.num_det, dog.num_gt, dog.num_det) == (4, 7, 1, 1)
    # Missed cats: g3 (no proposal reaches 0.5 on it) and g4 (its best cat detection d7 has IoU 0.4).
    assert cat.missed == {"not_covered": 1, "mislocalised": 1, "low_score": 0}
    assert cat.recall == 0.5 and cat.coverage == 0.75
    assert dog.missed == {"not_covered": 0, "mislocalised": 0, "low_score": 0} and dog.coverage == 1.0
    assert analysis.totals()["false_positives"]["mislocalised"] == 2
    # Without proposals coverage is unknown: g3 has no cat detection near it, so it is low_score.
    classes, analysis = _hand(None)
    assert classes["cat"].missed == {"not_covered": None, "mislocalised": 1, "low_score": 1}
    assert classes["cat"].coverage is None and analysis.totals()["missed"]["not_covered"] is None


def test_oracle_aps_by_hand():
    classes, analysis = _hand()
    cat = classes["cat"]
    # cat ranking: d0 T, d1 F, d2 F, d7 F, d3 F, d4 F, d5 T; 4 positives (all-point AP).
    # AP = 1/4 * 1 + 1/4 * 2/7 (precision at d5: 2 of 7) = 9/28.
    assert cat.ap == pytest.approx(9 / 28)
    assert cat.ap == evaluate(_dataset(HAND_GT), _detections(HAND_DETECTIONS), "voc12").per_class_ap["cat"]
    # localisation: d1 removed (its box g0 is taken), d2 removed (g2 is taken by d5), d7 takes the free g4:
    # d0 T, d7 T, d3 F, d4 F, d5 T -> 1/4 * 1 + 1/4 * 1 + 1/4 * 3/5 = 13/20.
    assert cat.oracle_ap["localisation"] == pytest.approx(13 / 20)
    # confusion (d3 removed) or background (d4 removed): precision at d5 is 2 of 6 -> 1/4 + 1/4 * 1/3 = 1/3.
    assert cat.oracle_ap["confusion"] == pytest.approx(1 / 3)
    assert cat.oracle_ap["background"] == pytest.approx(1 / 3)
    assert cat.oracle_gain["localisation"] == pytest.approx(13 / 20 - 9 / 28)
    assert classes["dog"].ap == 1.0 and classes["dog"].oracle_ap == {fix: 1.0 for fix in ORACLES}
    assert analysis.map == pytest.approx((9 / 28 + 1) / 2)
    assert analysis.oracle_map()["localisation"] == pytest.approx((13 / 20 + 1) / 2)


def test_ap_by_size_by_hand():
    classes, analysis = _hand()
    cat = classes["cat"]
    assert cat.num_gt_by_size == {"small": 2, "medium": 1, "large": 1}
    # small (g0, g3): d0 T; d5 took the large g2: ignored; unmatched d1 (area 90) and d7 (640) are
    # small false positives; d2 (4000), d3 and d4 (1600) are medium: ignored. d0 T, d1 F, d7 F -> 1/2.
    # medium (g4): no true positive -> 0. large (g2): d5 T, no large false positive -> 1.
    assert cat.ap_by_size == {"small": 0.5, "medium": 0.0, "large": 1.0}
    assert classes["dog"].ap_by_size == {"small": None, "medium": 1.0, "large": None}
    assert analysis.map_by_size() == {"small": 0.5, "medium": 0.5, "large": 1.0}


def test_top_ranked_counts_by_hand():
    classes, analysis = _hand()
    top = dict(zip(TOP_MULTIPLES, classes["cat"].top_ranked))
    # 4 cats: top 1 = d0; top 2 = d0, d1; top 4 = d0, d1, d2, d7; top 8 = all 7 detections.
    assert top[0.25] == {"detections": 1, "correct": 1, "localisation": 0, "confusion": 0, "background": 0}
    assert top[0.5] == {"detections": 2, "correct": 1, "localisation": 1, "confusion": 0, "background": 0}
    assert top[1.0] == {"detections": 4, "correct": 1, "localisation": 3, "confusion": 0, "background": 0}
    assert top[8.0] == {"detections": 7, "correct": 2, "localisation": 3, "confusion": 1, "background": 1}
    assert analysis.pooled_top_ranked()[0] == {"detections": 2, "correct": 2, "localisation": 0, "confusion": 0, "background": 0}


def test_difficult_boxes_are_ignored_and_their_near_misses_removed_by_the_oracle():
    # c: a difficult cat [0,0,50,50] and a normal cat [100,100,150,150].
    records = [ImageRecord("c", None, 200, 200, [[0, 0, 50, 50], [100, 100, 150, 150]], [CAT, CAT], difficult=[True, False])]
    detections = _detections([
        ("c", CAT, 0.9, [0, 0, 50, 50]),  # on the difficult box: ignored
        ("c", CAT, 0.8, [0, 0, 50, 20]),  # IoU 0.4 with the difficult box: mislocalised
        ("c", CAT, 0.7, [100, 100, 150, 150]),  # true positive
    ])
    (cat,) = analyze_errors(_dataset(records), detections, "voc12").classes
    assert cat.num_gt == 1 and cat.num_det == 2
    assert cat.false_positives["mislocalised"] == 1
    # ignored, F, T -> AP 1/2; the near miss cannot take a difficult box, so the oracle removes it -> 1.
    assert cat.ap == 0.5 and cat.oracle_ap["localisation"] == 1.0


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_invariants_on_simulated_detections(protocol):
    dataset = load_dataset("synthetic:24:3")
    detections = simulate_detections(dataset, seed=2, duplicate_rate=0.4, false_positives_per_image=5)
    proposals = {r.image_id: r.boxes[::2] for r in dataset}
    analysis = analyze_errors(dataset, detections, protocol, proposals=proposals)
    result = evaluate(dataset, detections, protocol)
    assert analysis.map == result.map
    matching = match_detections(dataset, detections, protocol)
    took = matching.matched_gt[matching.true_positive]
    assert len(np.unique(took)) == len(took)  # no box taken twice
    assert (matching.truth.labels[took] == matching.found.labels[matching.true_positive]).all()
    assert (matching.truth.images[took] == matching.found.images[matching.true_positive]).all()
    for c in analysis.classes:
        assert c.ap == result.per_class_ap[c.name]
        found = round(c.recall * c.num_gt)
        assert sum(c.false_positives.values()) + found == c.num_det
        assert sum(c.missed.values()) + found == c.num_gt
        assert all(ap >= c.ap for ap in c.oracle_ap.values())
        assert c.coverage is not None and c.recall <= 1.0
    assert sum(analysis.totals()["false_positives"].values()) > 0


def test_report_tables_and_figure(tmp_path):
    _, analysis = _hand()
    summary = format_summary(analysis)
    assert "| cat | 4 | 0.3214 | +0.3286 | +0.0119 | +0.0119 | 0.5000 | 0.7500 |" in summary
    assert summary.splitlines()[-1].startswith("| **mean** | 5 | 0.6607 |")
    text = format_analysis(analysis)
    for heading in ("## False positives by type", "## Missed objects", "## AP by object size", "## Definitions", "fp_types.png"):
        assert heading in text
    assert "| cat | 4 | 2 | 1 | 1 | 0 |" in text  # #gt, missed, not_covered, mislocalised, low_score
    path = plot_fp_types(analysis, tmp_path / "fp.png")
    assert path.stat().st_size > 1000
    json_ready = analysis.to_json()
    assert json_ready["classes"]["cat"]["missed"]["not_covered"] == 1 and json_ready["size_ranges_px2"]["large"] == [9216.0, None]


def test_unknown_images_or_labels_are_errors_for_the_library():
    with pytest.raises(ValueError, match="unknown to dataset"):
        analyze_errors(_dataset(HAND_GT), _detections([("zz", CAT, 0.5, [0, 0, 5, 5])]), "voc12")
