import numpy as np
import pytest

from detection.data.datasets import load_dataset
from detection.simulate import simulate_detections
from eval.compare import bootstrap_map_difference, ensemble_size_curve, plot_size_curve, resample
from eval.detection import evaluate


def test_resample_copies_ground_truth_and_detections():
    dataset = load_dataset("synthetic:6:0")
    detections = simulate_detections(dataset, seed=0)
    sample, (dets,) = resample(dataset, [detections], np.array([2, 2, 5]))
    assert [r.image_id for r in sample] == [f"{dataset[2].image_id}#0", f"{dataset[2].image_id}#1", f"{dataset[5].image_id}#2"]
    per_image = (detections.image_ids == dataset[2].image_id).sum()
    assert (dets.image_ids == f"{dataset[2].image_id}#1").sum() == per_image
    # Drawing every image once in order gives the original mAP.
    sample, (dets,) = resample(dataset, [detections], np.arange(len(dataset)))
    assert evaluate(sample, dets, "voc12").map == pytest.approx(evaluate(dataset, detections, "voc12").map)


def test_bootstrap_separates_a_better_detector_and_not_itself():
    dataset = load_dataset("synthetic:20:1")
    good = simulate_detections(dataset, seed=0, recall=0.95, localisation_noise=0.05)
    poor = simulate_detections(dataset, seed=0, recall=0.5, localisation_noise=0.2)
    result = bootstrap_map_difference(dataset, good, poor, "voc12", resamples=60, seed=1)
    assert result.difference > 0 and result.low > 0 and result.probability_a_better > 0.95
    same = bootstrap_map_difference(dataset, good, good, "voc12", resamples=20)
    assert same.low == same.high == 0.0
    assert "CI [" in result.line("good", "poor")


def test_size_curve_means_over_subsets(tmp_path):
    # mAP of a subset = mean of its members' "strengths" + 0.1 per extra member (a toy ensemble).
    strength = [0.3, 0.4, 0.5]
    curve = ensemble_size_curve(3, lambda subset: float(np.mean([strength[i] for i in subset]) + 0.1 * (len(subset) - 1)))
    assert curve.sizes == [1, 2, 3] and curve.subsets == [1 * 3, 3, 1]
    assert curve.mean[0] == pytest.approx(0.4) and curve.mean[1] == pytest.approx(0.5) and curve.mean[2] == pytest.approx(0.6)
    assert curve.per_member == [0.3, 0.4, 0.5]
    assert "| 2 | 3 | 0.5000 |" in curve.table("voc12")
    assert plot_size_curve(curve, tmp_path / "curve.png", "voc12").stat().st_size > 1000
