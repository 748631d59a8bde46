import numpy as np
import pytest

from eval.classification import average_probabilities, classification_errors, topk_correct, topk_error


def test_topk_on_a_hand_worked_case():
    probabilities = np.array([
        [0.1, 0.6, 0.2, 0.05, 0.05, 0.0],   # target 1: top-1 hit
        [0.3, 0.25, 0.2, 0.15, 0.06, 0.04],  # target 4: top-5 hit, top-1 miss
        [0.3, 0.25, 0.2, 0.15, 0.06, 0.04],  # target 5: sixth, a miss at 5
    ])
    targets = np.array([1, 4, 5])
    assert topk_correct(probabilities, targets, 1).tolist() == [True, False, False]
    assert topk_correct(probabilities, targets, 5).tolist() == [True, True, False]
    errors = classification_errors(probabilities, targets)
    assert errors["top1"] == pytest.approx(2 / 3) and errors["top5"] == pytest.approx(1 / 3)


def test_k_larger_than_classes_counts_everything_correct():
    assert topk_error(np.array([[0.2, 0.8]]), np.array([0]), 5) == 0.0


def test_averaging_over_models_and_crops():
    # Two models x two crops: the max of one crop would pick class 0; the average picks class 1.
    probabilities = np.array([[[[0.9, 0.1]], [[0.0, 1.0]]], [[[0.4, 0.6]], [[0.3, 0.7]]]])
    averaged = average_probabilities(probabilities, axes=(0, 1))
    assert averaged.shape == (1, 2)
    np.testing.assert_allclose(averaged, [[0.4, 0.6]])


def test_bad_shapes():
    with pytest.raises(ValueError):
        topk_correct(np.zeros((2, 3)), np.array([0]), 1)
    with pytest.raises(ValueError):
        topk_correct(np.zeros((1, 3)), np.array([3]), 1)
