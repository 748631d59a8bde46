"""Classification metrics of the paper's Table 3: top-1 and top-5 error from averaged softmax.

Shapes: ``probabilities`` is ``(N, C)`` (or ``(..., N, C)`` before averaging over models and
crops), ``targets`` is ``(N,)`` int64 class indices. A prediction is correct at ``k`` when the
target is among the ``k`` highest probabilities; ties are broken towards the lower class index,
which is what a stable descending sort gives.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["average_probabilities", "topk_correct", "topk_error", "classification_errors"]


def average_probabilities(probabilities: np.ndarray, axes: Sequence[int] = (0,)) -> np.ndarray:
    """Mean of softmax probabilities over the given leading axes (models, crops).

    The paper averages probabilities rather than taking the max over crops, and reports that
    averaging works better.
    """
    return np.asarray(probabilities, dtype=np.float64).mean(axis=tuple(axes))


def topk_correct(probabilities: np.ndarray, targets: np.ndarray, k: int) -> np.ndarray:
    """``(N,)`` bool: is each target among the top ``k`` classes? ``k`` is capped at C."""
    probabilities = np.asarray(probabilities)
    targets = np.asarray(targets, dtype=np.int64)
    if probabilities.ndim != 2 or len(probabilities) != len(targets):
        raise ValueError(f"probabilities must be (N, C) with N = len(targets); got {probabilities.shape} and {targets.shape}")
    if len(targets) and (targets.min() < 0 or targets.max() >= probabilities.shape[1]):
        raise ValueError(f"targets must lie in [0, {probabilities.shape[1]})")
    k = min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return (order == targets[:, None]).any(axis=1)


def topk_error(probabilities: np.ndarray, targets: np.ndarray, k: int) -> float:
    """Fraction of samples whose target is not among the top ``k``."""
    if len(targets) == 0:
        raise ValueError("no samples to score")
    return float(1.0 - topk_correct(probabilities, targets, k).mean())


def classification_errors(probabilities: np.ndarray, targets: np.ndarray, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """``{"top1": ..., "top5": ...}`` errors for an ``(N, C)`` probability matrix."""
    return {f"top{k}": topk_error(probabilities, targets, k) for k in ks}
