"""Proposal recall (coverage): how well a set of region proposals covers the ground truth.

For every ground-truth box the *best overlap* is the highest IoU any proposal of its image
reaches. From those:

- recall@t: the fraction of ground-truth boxes whose best overlap is at least ``t`` (the paper's
  "coverage" is recall@0.5);
- average recall (AR), the mean of recall@t over t = 0.50, 0.55, ..., 0.95 (the standard
  proposal metric; COCO's thresholds), over all boxes and per class, beside recall@0.5 per class;
- ABO (average best overlap) per class, and MABO, the mean of the per-class ABOs;
- recall@0.5 when only each image's first N proposals are kept (stores keep proposals ranked);
- curves of recall against the number of proposals and against the IoU threshold.

Every ground-truth box counts, difficult ones included: a proposal method cannot know which
boxes an evaluator will later ignore.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from detection.core.boxes import box_iou_numpy
from detection.data.records import Dataset

__all__ = ["RecallResult", "best_overlap", "proposal_recall", "format_recall_table", "plot_recall"]

TOP_N = (100, 200, 500, 1000, 2000)
CURVE_IOUS = np.round(np.arange(0.5, 1.0001, 0.05), 2)
#: The IoU thresholds average recall is the mean over: 0.50:0.05:0.95.
AR_IOUS = np.round(np.arange(0.5, 0.9501, 0.05), 2)


@dataclass
class RecallResult:
    """Coverage of one proposal set on one dataset (see the module note)."""

    label: str
    num_images: int
    num_gt: int
    boxes_per_image: float
    recall_50: float
    recall_70: float
    mabo: float
    abo_per_class: dict[str, float]
    recall_per_class: dict[str, float]
    average_recall: float
    ar_per_class: dict[str, float]
    recall_at_top: dict[int, float]
    curve_num_proposals: list[int] = field(default_factory=list)
    curve_recall_vs_num: list[float] = field(default_factory=list)
    curve_ious: list[float] = field(default_factory=list)
    curve_recall_vs_iou: list[float] = field(default_factory=list)

    def to_json(self) -> dict:
        data = dict(self.__dict__)
        data["recall_at_top"] = {str(k): v for k, v in self.recall_at_top.items()}
        return data


def _best_overlaps_by_rank(gt_boxes: np.ndarray, proposals: np.ndarray, ranks: np.ndarray) -> np.ndarray:
    """``(G, len(ranks))`` best IoU of each gt box over the first ``ranks[j]`` proposals."""
    if len(gt_boxes) == 0:
        return np.zeros((0, len(ranks)))
    if len(proposals) == 0:
        return np.zeros((len(gt_boxes), len(ranks)))
    running_best = np.maximum.accumulate(box_iou_numpy(gt_boxes, proposals), axis=1)
    columns = np.clip(ranks, 1, len(proposals)) - 1
    return running_best[:, columns]


def best_overlap(gt_boxes: np.ndarray, proposals: np.ndarray) -> np.ndarray:
    """``(G,)`` best IoU of each of ``gt_boxes (G, 4)`` over all ``proposals (P, 4)`` (0 without any)."""
    proposals = np.asarray(proposals, dtype=np.float32).reshape(-1, 4)
    return _best_overlaps_by_rank(np.asarray(gt_boxes).reshape(-1, 4), proposals, np.array([max(len(proposals), 1)]))[:, 0]


def proposal_recall(dataset: Dataset, proposals: Mapping[str, np.ndarray], label: str = "proposals") -> RecallResult:
    """Coverage statistics of ``proposals`` (image id -> ranked ``(B, 4)`` boxes) on ``dataset``.

    Images absent from ``proposals`` count as having no proposals (their objects are misses).
    """
    counts = np.array([len(proposals.get(record.image_id, ())) for record in dataset], dtype=np.int64)
    max_count = int(counts.max()) if len(counts) else 0
    curve_ranks = np.unique(np.concatenate([np.round(np.geomspace(1, max(max_count, 1), 40)), TOP_N, [max(max_count, 1)]]).astype(np.int64))
    best_rows, labels = [], []
    for record in dataset:
        boxes = np.asarray(proposals.get(record.image_id, np.zeros((0, 4))), dtype=np.float32).reshape(-1, 4)
        best_rows.append(_best_overlaps_by_rank(record.boxes, boxes, curve_ranks))
        labels.append(record.labels)
    best_by_rank = np.concatenate(best_rows + [np.zeros((0, len(curve_ranks)))])
    gt_labels = np.concatenate(labels + [np.zeros(0, np.int64)])
    best = best_by_rank[:, -1] if len(best_by_rank) else np.zeros(0)
    num_gt = len(best)

    def recall(values: np.ndarray, threshold: float) -> float:
        return float((values >= threshold).mean()) if len(values) else 0.0

    def average_recall(values: np.ndarray) -> float:
        return float(np.mean([recall(values, float(t)) for t in AR_IOUS]))

    abo_per_class, recall_per_class, ar_per_class = {}, {}, {}
    for index, name in enumerate(dataset.classes):
        mine = best[gt_labels == index]
        if len(mine):
            abo_per_class[name] = float(mine.mean())
            recall_per_class[name] = recall(mine, 0.5)
            ar_per_class[name] = average_recall(mine)
    rank_position = {int(r): j for j, r in enumerate(curve_ranks)}
    return RecallResult(
        label=label,
        num_images=len(dataset),
        num_gt=num_gt,
        boxes_per_image=float(counts.mean()) if len(counts) else 0.0,
        recall_50=recall(best, 0.5),
        recall_70=recall(best, 0.7),
        mabo=float(np.mean(list(abo_per_class.values()))) if abo_per_class else 0.0,
        abo_per_class=abo_per_class,
        recall_per_class=recall_per_class,
        average_recall=average_recall(best),
        ar_per_class=ar_per_class,
        recall_at_top={n: recall(best_by_rank[:, rank_position[n]], 0.5) for n in TOP_N},
        curve_num_proposals=[int(r) for r in curve_ranks],
        curve_recall_vs_num=[recall(best_by_rank[:, j], 0.5) for j in range(len(curve_ranks))],
        curve_ious=[float(t) for t in CURVE_IOUS],
        curve_recall_vs_iou=[recall(best, float(t)) for t in CURVE_IOUS],
    )


def format_recall_table(results: Sequence[RecallResult]) -> str:
    """A markdown table, one column per proposal set, then per-class coverage and AR rows."""
    header = "| | " + " | ".join(r.label for r in results) + " |"
    lines = [header, "|---" * (len(results) + 1) + "|"]

    def row(name: str, values: Sequence[str]) -> None:
        lines.append(f"| {name} | " + " | ".join(values) + " |")

    row("boxes/image", [f"{r.boxes_per_image:.1f}" for r in results])
    row("recall@0.5", [f"{r.recall_50:.4f}" for r in results])
    row("recall@0.7", [f"{r.recall_70:.4f}" for r in results])
    row("AR (0.50:0.95)", [f"{r.average_recall:.4f}" for r in results])
    row("MABO", [f"{r.mabo:.4f}" for r in results])
    for n in TOP_N:
        row(f"recall@0.5, top {n}", [f"{r.recall_at_top[n]:.4f}" for r in results])
    classes = sorted({name for r in results for name in r.recall_per_class})
    for name in classes:
        row(f"coverage: {name}", [f"{r.recall_per_class.get(name, float('nan')):.4f}" for r in results])
    for name in classes:
        row(f"AR: {name}", [f"{r.ar_per_class.get(name, float('nan')):.4f}" for r in results])
    return "\n".join(lines)


def plot_recall(results: Sequence[RecallResult], out_dir: str | Path) -> list[Path]:
    """Recall vs number of proposals and recall vs IoU threshold, as two PNG files."""
    import matplotlib  # slow to import; only to draw

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    figure, axis = plt.subplots(figsize=(6, 4.2))
    for r in results:
        axis.plot(r.curve_num_proposals, r.curve_recall_vs_num, label=f"{r.label} ({r.boxes_per_image:.0f}/image)")
    axis.set(xscale="log", xlabel="proposals per image (top N)", ylabel="recall at IoU 0.5", ylim=(0, 1.01), title="Recall vs number of proposals")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    paths.append(out_dir / "recall_vs_proposals.png")
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)
    figure, axis = plt.subplots(figsize=(6, 4.2))
    for r in results:
        axis.plot(r.curve_ious, r.curve_recall_vs_iou, marker="o", markersize=3, label=r.label)
    axis.set(xlabel="IoU threshold", ylabel="recall (all proposals)", ylim=(0, 1.01), title="Recall vs IoU threshold")
    axis.grid(True, alpha=0.3)
    axis.legend(fontsize=8)
    figure.tight_layout()
    paths.append(out_dir / "recall_vs_iou.png")
    figure.savefig(paths[-1], dpi=120)
    plt.close(figure)
    return paths
