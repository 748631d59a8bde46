"""Comparing detectors honestly: bootstrap confidence intervals and ensemble-size curves.

A mAP difference between two detectors on a few hundred test images can be noise. The
bootstrap here resamples *images* with replacement (the unit that was sampled when the test set
was drawn), evaluates both detection sets on each resample, and reports the percentile interval
of the difference. Both detectors are evaluated on the same resamples, so the interval is that
of the paired difference, much narrower than two separate intervals.

``ensemble_size_curve`` answers "what does the k-th member add?": for every ensemble size k it
averages the mAP over all subsets of k members (or a seeded sample of them when there are many).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detection.data.records import Dataset, Detections
from eval.detection import evaluate

__all__ = ["BootstrapResult", "bootstrap_map_difference", "resample", "SizeCurve", "ensemble_size_curve", "plot_size_curve"]

logger = logging.getLogger(__name__)


@dataclass
class BootstrapResult:
    """mAP of A and B on the full test set, and the bootstrap distribution of ``A - B``."""

    map_a: float
    map_b: float
    difference: float
    low: float
    high: float
    confidence: float
    resamples: int
    probability_a_better: float

    def line(self, name_a: str = "A", name_b: str = "B") -> str:
        return (
            f"mAP {name_a} {self.map_a:.4f} vs {name_b} {self.map_b:.4f}: difference {self.difference:+.4f}, "
            f"{self.confidence:.0%} CI [{self.low:+.4f}, {self.high:+.4f}] ({self.resamples} image resamples; "
            f"{name_a} better in {self.probability_a_better:.1%})"
        )


def resample(dataset: Dataset, detections: Sequence[Detections], picks: np.ndarray) -> tuple[Dataset, list[Detections]]:
    """The dataset of images ``picks`` (with repeats) and each detection set restricted to it.

    A repeated image becomes a new image (id suffixed ``#k``) with its ground truth and its
    detections copied, which is exactly what drawing it twice from the population means.
    """
    records, renamed = [], []
    for k, index in enumerate(picks):
        record = dataset.records[index]
        records.append(type(record)(f"{record.image_id}#{k}", record.path, record.width, record.height, record.boxes, record.labels, record.difficult, record.crowd))
        renamed.append(record.image_id)
    blacklisted: dict[str, list[int]] = {}
    for image_id, label in dataset.blacklist:
        blacklisted.setdefault(image_id, []).append(label)
    blacklist = frozenset((f"{image_id}#{k}", label) for k, image_id in enumerate(renamed) for label in blacklisted.get(image_id, ()))
    sample = Dataset(dataset.spec + " (resample)", dataset.classes, records, dataset.image_loader, blacklist, dataset.class_ids)
    outputs = []
    for dets in detections:
        by_image: dict[str, np.ndarray] = {}
        order = np.argsort(dets.image_ids.astype(str), kind="stable")
        ids_sorted = dets.image_ids[order].astype(str)
        unique, starts = np.unique(ids_sorted, return_index=True)
        ends = np.append(starts[1:], len(ids_sorted))
        for image_id, start, end in zip(unique, starts, ends):
            by_image[image_id] = order[start:end]
        parts = []
        for k, image_id in enumerate(renamed):
            rows = by_image.get(image_id)
            if rows is not None and len(rows):
                part = dets.select(rows)
                parts.append(Detections(np.full(len(rows), f"{image_id}#{k}", dtype=object), part.labels, part.scores, part.boxes))
        outputs.append(Detections.concatenate(parts))
    return sample, outputs


def bootstrap_map_difference(
    dataset: Dataset,
    detections_a: Detections,
    detections_b: Detections,
    protocol: str = "ilsvrc",
    iou: float = 0.5,
    resamples: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
    progress: bool = False,
) -> BootstrapResult:
    """Paired bootstrap over images of ``mAP(A) - mAP(B)`` (percentile interval)."""
    from detection.core.progress import progress_bar

    if resamples < 10:
        raise ValueError("use at least 10 resamples")
    map_a = evaluate(dataset, detections_a, protocol, iou).map
    map_b = evaluate(dataset, detections_b, protocol, iou).map
    rng = np.random.default_rng(seed)
    differences = np.empty(resamples)
    for r in progress_bar(range(resamples), desc="bootstrap", disable=not progress):
        picks = rng.integers(0, len(dataset), len(dataset))
        sample, (a, b) = resample(dataset, [detections_a, detections_b], picks)
        differences[r] = evaluate(sample, a, protocol, iou).map - evaluate(sample, b, protocol, iou).map
    tail = (1.0 - confidence) / 2
    low, high = np.quantile(differences, [tail, 1.0 - tail])
    return BootstrapResult(map_a, map_b, map_a - map_b, float(low), float(high), confidence, resamples, float((differences > 0).mean()))


@dataclass
class SizeCurve:
    """mAP per ensemble size: mean, min and max over the member subsets evaluated."""

    sizes: list[int] = field(default_factory=list)
    mean: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    subsets: list[int] = field(default_factory=list)
    per_member: list[float] = field(default_factory=list)

    def table(self, protocol: str) -> str:
        lines = [f"| members | subsets | mean mAP ({protocol}) | min | max |", "|---|---|---|---|---|"]
        for row in zip(self.sizes, self.subsets, self.mean, self.low, self.high):
            lines.append("| {} | {} | {:.4f} | {:.4f} | {:.4f} |".format(*row))
        return "\n".join(lines)


def ensemble_size_curve(
    num_members: int,
    map_of_subset: Callable[[tuple[int, ...]], float],
    max_subsets: int = 20,
    seed: int = 0,
) -> SizeCurve:
    """Mean mAP over member subsets of each size 1..N (all subsets, or ``max_subsets`` drawn)."""
    rng = np.random.default_rng(seed)
    curve = SizeCurve()
    for size in range(1, num_members + 1):
        subsets = list(itertools.combinations(range(num_members), size))
        if len(subsets) > max_subsets:
            subsets = [subsets[i] for i in sorted(rng.choice(len(subsets), max_subsets, replace=False))]
        values = [map_of_subset(subset) for subset in subsets]
        if size == 1:
            curve.per_member = values
        curve.sizes.append(size)
        curve.mean.append(float(np.mean(values)))
        curve.low.append(float(np.min(values)))
        curve.high.append(float(np.max(values)))
        curve.subsets.append(len(subsets))
    return curve


def plot_size_curve(curve: SizeCurve, path: str | Path, protocol: str, title: str = "mAP vs ensemble size") -> Path:
    """The curve (mean with min-max band) as a PNG."""
    import matplotlib  # slow to import; only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 4))
    axis.fill_between(curve.sizes, curve.low, curve.high, alpha=0.2, label="min-max over subsets")
    axis.plot(curve.sizes, curve.mean, marker="o", label="mean over subsets")
    axis.set(xlabel="members in the ensemble", ylabel=f"mAP ({protocol})", title=title, xticks=curve.sizes)
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path
