"""The classification track (the paper's Table 3): top-1/top-5 error by crops and models.

Each test item is a picture with one class: a whole image of an ``imagefolder:`` dataset, or a
ground-truth object of a detection dataset (its box is the picture; difficult and crowd boxes
are left out). Every item is cut into the crops of each scheme (1, 10, 144; see
:mod:`classifiers.multicrop`) on the device and scored by every member; softmax probabilities
are averaged over crops, then over members, as the paper does.

Members are region classifiers (C + 1 outputs, 0 = background). For classification the
background output is dropped and the C class probabilities renormalised.

The "1 model" rows give the mean error over the members taken one at a time (the paper's
single model is one draw from that distribution); the "N models" rows average all members.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from classifiers.ensemble import Ensemble
from classifiers.multicrop import multicrop_batch
from detection.core.problems import DataError, WarningTally
from detection.core.progress import progress_bar
from detection.data.images import count_if_truncated
from detection.data.records import Dataset
from eval.classification import topk_error

__all__ = ["ClassificationRow", "ClassificationReport", "object_items", "run_classification_track"]

logger = logging.getLogger(__name__)


@dataclass
class ClassificationRow:
    models: int
    crops: int
    cost: int
    top1: float
    top5: float
    delta_top5: float
    delta_top1: float


@dataclass
class ClassificationReport:
    dataset: str
    items: int
    classes: int
    member_ids: list[int]
    rows: list[ClassificationRow] = field(default_factory=list)

    def table(self) -> str:
        lines = [
            f"Classification on {self.dataset}: {self.items} items, {self.classes} classes, members {self.member_ids}",
            "",
            "| models | crops | cost | top-1 error | top-1 vs base | top-5 error | top-5 vs base |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in self.rows:
            base = row is self.rows[0]
            delta1 = "base" if base else f"{row.delta_top1 * 100:+.2f}%"
            delta5 = "base" if base else f"{row.delta_top5 * 100:+.2f}%"
            lines.append(f"| {row.models} | {row.crops} | {row.cost} | {row.top1 * 100:.2f}% | {delta1} | {row.top5 * 100:.2f}% | {delta5} |")
        if self.classes <= 5:
            lines += ["", f"With {self.classes} classes the top-5 error is 0 by construction: read the top-1 columns."]
        return "\n".join(lines)

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "items": self.items, "classes": self.classes, "member_ids": self.member_ids, "rows": [r.__dict__ for r in self.rows]}


def object_items(dataset: Dataset, max_items: int | None = None, seed: int = 0) -> list[tuple[int, np.ndarray, int]]:
    """``(record index, box (4,), label)`` of every usable ground-truth object (a seeded subset)."""
    items = []
    for index, record in enumerate(dataset.records):
        usable = ~(record.difficult | record.crowd)
        for box, label in zip(record.boxes[usable], record.labels[usable]):
            items.append((index, box, int(label)))
    if max_items is not None and len(items) > max_items:
        chosen = np.sort(np.random.default_rng(seed).choice(len(items), max_items, replace=False))
        items = [items[i] for i in chosen]
    return items


def run_classification_track(
    dataset: Dataset,
    checkpoints_dir: str | Path,
    members: Sequence[int] | None = None,
    schemes: tuple[int, ...] = (1, 10, 144),
    max_items: int | None = 300,
    items_per_batch: int = 8,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> ClassificationReport:
    """Top-1/top-5 errors for every (members, crops) cell of Table 3's shape (members: indices, None: all)."""
    ensemble = Ensemble.from_dir(checkpoints_dir, dataset.classes, members, device)
    items = object_items(dataset, max_items, seed)
    if not items:
        raise ValueError(f"{dataset.spec}: no usable ground-truth objects to classify")
    probabilities, usable = _item_probabilities(ensemble, dataset, items, schemes, items_per_batch, progress)
    targets = np.array([label for _, _, label in items])[usable]
    report = ClassificationReport(dataset.spec, int(usable.sum()), dataset.num_classes, ensemble.member_ids)
    base_top1 = base_top5 = None
    for models in sorted({1, len(ensemble.models)}):
        for scheme in schemes:
            probs = probabilities[scheme][:, usable]
            if models == 1:
                top1 = float(np.mean([topk_error(p, targets, 1) for p in probs]))
                top5 = float(np.mean([topk_error(p, targets, 5) for p in probs]))
            else:
                averaged = probs.mean(axis=0)
                top1, top5 = topk_error(averaged, targets, 1), topk_error(averaged, targets, 5)
            base_top1 = top1 if base_top1 is None else base_top1
            base_top5 = top5 if base_top5 is None else base_top5
            report.rows.append(ClassificationRow(models, scheme, models * scheme, top1, top5, top5 - base_top5, top1 - base_top1))
    return report


def _item_probabilities(
    ensemble: Ensemble, dataset: Dataset, items: list[tuple[int, np.ndarray, int]], schemes: tuple[int, ...], items_per_batch: int, progress: bool
) -> tuple[dict[int, np.ndarray], np.ndarray]:
    """Per scheme, each member's class probabilities of each item ``(M, items, C)``, averaged over
    the scheme's crops, and the ``(items,)`` mask of items whose image could be read."""
    tally = WarningTally(f"classification {dataset.spec}", logger)
    probabilities = {s: np.zeros((len(ensemble.models), len(items), dataset.num_classes)) for s in schemes}
    usable = np.ones(len(items), dtype=bool)
    cache: dict[int, np.ndarray] = {}
    bar = progress_bar(total=len(items) * len(schemes), desc="classification crops", unit="item", disable=not progress)
    for start in range(0, len(items), items_per_batch):
        batch = list(range(start, min(len(items), start + items_per_batch)))
        images, regions, kept = [], [], []
        for i in batch:
            index = items[i][0]
            if index not in cache:
                try:
                    cache = {index: dataset.load_image(index)}  # items come grouped by image
                except DataError as error:
                    tally.warn("unreadable image, its objects skipped", error.path, error.fault)
                    usable[i] = False
                    continue
                count_if_truncated(tally, dataset[index].path)
            images.append(cache[index])
            regions.append(items[i][1])
            kept.append(i)
        for scheme in schemes:
            if kept:
                probabilities[scheme][:, kept] = _scheme_probabilities(ensemble, images, regions, scheme)
            bar.update(len(batch))
    bar.close()
    tally.log_summary()
    return probabilities, usable


def _scheme_probabilities(ensemble: Ensemble, images: list[np.ndarray], regions: list[np.ndarray], scheme: int) -> np.ndarray:
    """``(M, len(images), C)``: each member's class probabilities (background dropped, the rest
    renormalised) of each picture, averaged over its ``scheme`` crops."""
    crops = multicrop_batch(images, regions, scheme, ensemble.config.crop_size, ensemble.device)
    member_probabilities = torch.cat([ensemble.score_crops(chunk) for chunk in crops.split(ensemble.crops_per_batch)], dim=1).numpy()
    classes_only = member_probabilities[:, :, 1:]
    classes_only /= np.clip(classes_only.sum(axis=2, keepdims=True), 1e-12, None)
    return classes_only.reshape(len(ensemble.models), len(images), scheme, -1).mean(axis=2)
