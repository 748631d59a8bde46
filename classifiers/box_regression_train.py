"""Fitting the members' box regressors: training samples, their features, one ridge fit per member.

Every training proposal (and ground-truth box) whose best IoU with a ground-truth box is at least
``fg_iou`` (R-CNN: 0.6) is a sample of that box's class. One pass over the samples' images gives
every member's pooled features, warped exactly as at detection time; each member's regressor
(:mod:`classifiers.box_regression`) is then fitted and written atomically. A file with the same
identity (settings, member checkpoint digest, data) is reused; one with another is refused.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from classifiers.box_regression import (
    REGRESSOR_KIND,
    BoxRegressionConfig,
    fit_box_regressor,
    regression_targets,
    regressor_path,
    save_box_regressor,
)
from classifiers.ensemble import Ensemble, member_paths
from detection.core import distributed
from detection.core.atomic import file_digest
from detection.core.boxes import box_iou_numpy
from detection.core.checkpoints import CheckpointError, first_difference, load_checkpoint
from detection.core.devices import torch_threads
from detection.core.problems import DataError, WarningTally
from detection.core.progress import progress_bar
from detection.data.images import count_if_truncated
from detection.data.records import Dataset, ImageRecord

__all__ = ["RegressionSamples", "match_proposals", "regression_samples", "fit_box_regressors"]

logger = logging.getLogger(__name__)

#: Boxes narrower or shorter than this (pixels) are never samples: their targets divide by it.
_MIN_SIDE = 1.0

# ----------------------------------------------------------------------------- training samples


@dataclass
class RegressionSamples:
    """The S training samples of a dataset's box regressors, image-major.

    Attributes:
        image_indices: ``(S,)`` int64 dataset positions.
        boxes: ``(S, 4)`` float32 windows (proposals or ground-truth boxes).
        gt_boxes: ``(S, 4)`` float32 the ground-truth box each window is matched to.
        labels: ``(S,)`` int64 dataset class of that box (``0 .. C - 1``).
    """

    image_indices: np.ndarray
    boxes: np.ndarray
    gt_boxes: np.ndarray
    labels: np.ndarray

    def __len__(self) -> int:
        return len(self.labels)

    def targets(self) -> Tensor:
        """``(S, 4)`` float32 :func:`regression_targets` of the windows."""
        return regression_targets(torch.from_numpy(self.boxes), torch.from_numpy(self.gt_boxes))


def _usable(boxes: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: boxes at least :data:`_MIN_SIDE` wide and high."""
    return ((boxes[:, 2] - boxes[:, 0]) >= _MIN_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= _MIN_SIDE)


def match_proposals(record: ImageRecord, proposal_boxes: np.ndarray | None, fg_iou: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The regression samples of one image: its windows (proposals, then its ground truth)
    whose best IoU with a ground-truth box is ``>= fg_iou``, matched to that box.

    Crowd regions and ground-truth boxes under one pixel a side are never targets (as in
    :mod:`classifiers.sampling`); difficult boxes are.

    Returns:
        windows ``(S, 4)`` float32, their matched boxes ``(S, 4)`` float32 and classes ``(S,)`` int64.
    """
    crowd = np.asarray(record.crowd, dtype=bool)
    targets = _usable(record.boxes) & ~crowd
    gt_boxes, gt_labels = record.boxes[targets], record.labels[targets]
    empty = (np.zeros((0, 4), np.float32), np.zeros((0, 4), np.float32), np.zeros((0,), np.int64))
    if not len(gt_boxes):
        return empty
    proposals = np.zeros((0, 4), np.float32) if proposal_boxes is None else np.asarray(proposal_boxes, np.float32).reshape(-1, 4)
    windows = np.concatenate([proposals, gt_boxes]).astype(np.float32)
    windows = windows[_usable(windows)]
    iou = box_iou_numpy(windows, gt_boxes)
    best = iou.argmax(axis=1)
    keep = iou[np.arange(len(windows)), best] >= fg_iou
    return windows[keep], gt_boxes[best[keep]].astype(np.float32), gt_labels[best[keep]].astype(np.int64)


def regression_samples(
    dataset: Dataset, proposals: Mapping[str, Any], fg_iou: float = 0.6, max_per_class: int | None = None, seed: int = 0
) -> RegressionSamples:
    """Every image's :func:`match_proposals`, at most ``max_per_class`` per class.

    Args:
        proposals: image id -> stored proposals (``ProposalStore.load_all()``); an image that is
            missing or whose proposals failed contributes its ground-truth boxes only.
        max_per_class: cap per class, drawn uniformly without replacement with a generator
            seeded by ``(seed, class)``; None keeps all.
    Returns:
        The samples, image-major (the draw keeps the original order).
    """
    indices, windows, gts, labels = [], [], [], []
    for index, record in enumerate(dataset.records):
        item = proposals.get(record.image_id)
        boxes = None if item is None or item.error else item.boxes
        w, g, lab = match_proposals(record, boxes, fg_iou)
        indices.append(np.full(len(lab), index, np.int64))
        windows.append(w)
        gts.append(g)
        labels.append(lab)
    image_indices = np.concatenate(indices + [np.zeros((0,), np.int64)])
    all_labels = np.concatenate(labels + [np.zeros((0,), np.int64)])
    keep = np.ones(len(all_labels), dtype=bool)
    if max_per_class is not None:
        for c in np.unique(all_labels):
            members = np.flatnonzero(all_labels == c)
            if len(members) > max_per_class:
                rng = np.random.default_rng(np.random.SeedSequence([seed, int(c)]))
                keep[members] = False
                keep[rng.choice(members, size=max_per_class, replace=False)] = True
    return RegressionSamples(
        image_indices[keep],
        np.concatenate(windows + [np.zeros((0, 4), np.float32)])[keep],
        np.concatenate(gts + [np.zeros((0, 4), np.float32)])[keep],
        all_labels[keep],
    )


def _identity(dataset: Dataset, config: BoxRegressionConfig, member: int, member_digest: str) -> dict[str, Any]:
    """What a regressor file must record to be reused: the fit's settings, member and data."""
    return {
        "box_regression": config.identity(),
        "member": {"index": member, "checkpoint": member_digest},
        "data": {"spec": dataset.spec, "fingerprint": dataset.fingerprint()},
    }


def _finished(path: Path, classes: list[str], expected: dict[str, Any]) -> bool:
    """Whether ``path`` holds a regressor with this identity; one with another is refused."""
    if not path.exists():
        return False
    payload = load_checkpoint(path, REGRESSOR_KIND, classes=classes)
    stored = payload.get("config") or {}
    pairs = {
        "box_regression": (stored.get("box_regression"), expected["box_regression"]),
        "member": (stored.get("member"), expected["member"]),
        "data.fingerprint": ((stored.get("data") or {}).get("fingerprint"), expected["data"]["fingerprint"]),
    }
    for section, (old, new) in pairs.items():
        difference = first_difference(old, new, f"{section}.")
        if difference:
            raise CheckpointError(f"{path}: made for another member, data or configuration ({difference}); delete it to fit it again")
    return True


# ----------------------------------------------------------------------------- per member, from files


def _image_spans(samples: RegressionSamples) -> list[tuple[int, int]]:
    """``(start, stop)`` of each image's run of samples (they are image-major)."""
    if not len(samples):
        return []
    starts = np.flatnonzero(np.r_[True, samples.image_indices[1:] != samples.image_indices[:-1]])
    stops = np.r_[starts[1:], len(samples)]
    return [(int(a), int(b)) for a, b in zip(starts, stops)]


def _member_features(ensemble: Ensemble, dataset: Dataset, samples: RegressionSamples, progress: bool) -> tuple[list[Tensor], np.ndarray]:
    """Each member's pooled features of every sample's window, warped as at detection time.

    Images are scored in groups of at most about ``ensemble.crops_per_batch`` crops, through
    :meth:`classifiers.ensemble.Ensemble.score` (no mirroring, no colour distortion).

    Returns:
        ``M`` tensors ``(S', D_m)`` float32 on the CPU, and the ``(S,)`` bool mask of the samples
        they cover (those of unreadable images are dropped, with a counted warning).
    """
    tally = WarningTally(f"box regression {dataset.spec}", logger)
    covered = np.zeros(len(samples), dtype=bool)
    parts: list[list[Tensor]] = [[] for _ in ensemble.models]
    group: list[tuple[np.ndarray, np.ndarray]] = []
    bar = progress_bar(total=len(_image_spans(samples)), desc="box regression features", unit="img", disable=not progress)

    def flush() -> None:
        for scores in ensemble.score([image for image, _ in group], [boxes for _, boxes in group], features=True):
            for part, member_features in zip(parts, scores.features or []):
                part.append(member_features)
        bar.update(len(group))
        group.clear()

    for start, stop in _image_spans(samples):
        index = int(samples.image_indices[start])
        try:
            image = dataset.load_image(index)
        except DataError as error:
            tally.warn("unreadable image, its samples dropped", error.path, error.fault)
            bar.update(1)
            continue
        count_if_truncated(tally, dataset[index].path)
        if group and sum(len(b) for _, b in group) + (stop - start) > ensemble.crops_per_batch:
            flush()
        group.append((image, samples.boxes[start:stop]))
        covered[start:stop] = True
    flush()
    bar.close()
    tally.log_summary()
    features = [torch.cat(part) if part else torch.zeros((0, model.num_features)) for part, model in zip(parts, ensemble.models)]
    return features, covered


def fit_box_regressors(
    dataset: Dataset,
    proposals: Mapping[str, Any],
    config: BoxRegressionConfig,
    members_dir: str | Path,
    members: Sequence[int] | None = None,
    device: str = "auto",
    progress: bool = True,
    num_threads: int | None = None,
) -> list[Path]:
    """Fit ``members_dir/box_regressor{m}.pt`` for each member ``m`` on the training set.

    The samples (:func:`regression_samples`) are drawn once; one pass over their images gives
    every unfinished member's features; each member's regressor is then fitted
    (:func:`fit_box_regressor`) and written atomically. A file already there with the same
    identity (settings, member checkpoint digest, data) is reused, so a rerun redoes nothing;
    one with another identity is refused. Under torchrun rank 0 does the work and the others
    wait for it.

    Args:
        dataset: the training set the members were trained on.
        proposals: image id -> its stored proposals (``ProposalStore.load_all()``).
        config: the ``box_regression`` section (``enabled`` is not looked at).
        members_dir: the directory of the ``member{m}.pt`` checkpoints.
        members: which members (default: all found there).
        device: where to compute the features: ``auto``, ``cpu`` or ``cuda``.
        num_threads: torch CPU threads meanwhile (None: unchanged).
    Returns:
        The regressor paths, in the order of ``members``.
    Raises:
        CheckpointError: a missing member, or a regressor file made for something else.
    """
    members_dir = Path(members_dir)
    found = member_paths(members_dir)
    chosen = list(found) if members is None else list(members)
    missing = [m for m in chosen if m not in found]
    if missing:
        raise CheckpointError(f"{members_dir}: no checkpoint for member(s) {missing}: train them before fitting box regressors")
    paths = {m: regressor_path(members_dir, m) for m in chosen}
    expected = {m: _identity(dataset, config, m, file_digest(found[m])) for m in chosen}
    todo = [m for m in chosen if not _finished(paths[m], dataset.classes, expected[m])]
    if not todo:
        logger.info("box regressors of member(s) %s already fitted in %s", chosen, members_dir)
    elif distributed.is_main():
        with torch_threads(num_threads):
            samples = regression_samples(dataset, proposals, config.fg_iou, config.max_samples_per_class, config.seed)
            logger.info(
                "box regression: %d samples (IoU >= %.2f, at most %d per class) for member(s) %s",
                len(samples), config.fg_iou, config.max_samples_per_class, todo,
            )
            ensemble = Ensemble.from_dir(members_dir, dataset.classes, todo, device)
            features, covered = _member_features(ensemble, dataset, samples, progress)
            targets = samples.targets()[torch.from_numpy(covered)]
            labels = torch.from_numpy(samples.labels[covered])
            for member, member_features in zip(todo, features):
                regressor = fit_box_regressor(
                    member_features, targets, labels, dataset.num_classes, config.ridge_lambda,
                    config.min_samples_per_class, dataset.classes, f"box regression, member {member}",
                )
                save_box_regressor(paths[member], regressor, expected[member], dataset.classes)
                logger.info("member %d: box regressor -> %s", member, paths[member])
    # The other ranks read these files next (detection): not before they are whole.
    distributed.barrier()
    return [paths[m] for m in chosen]
