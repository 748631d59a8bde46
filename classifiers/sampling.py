"""R-CNN fine-tuning windows: labelling proposals against ground truth, and drawing batches.

Labelling (R-CNN, Girshick et al. 2014, section 2.3 and appendix B). The candidate windows of a
training image are its stored proposals *plus its ground-truth boxes* (R-CNN adds them, so every
object has at least one perfect positive). Each window takes the class of the ground-truth box
it overlaps most:

- max IoU ``>= fg_iou`` (0.5): foreground, classifier index ``label + 1``;
- max IoU in ``[bg_iou_low, bg_iou_high)`` (default ``[0, 0.5)``): background, index 0;
- anything else (only when the two ranges leave a gap, e.g. ``bg_iou_high = 0.3``): ignored.

Choices the paper leaves open, made here:

- *Difficult* ground truth stays a positive (its box is a window and a match target). R-CNN on
  VOC left difficult objects out of its fine-tuning positives; keeping them is simpler, gives a
  few more positives, and is what every dataset without the flag (ILSVRC, COCO) does anyway.
- *Crowd* regions (COCO ``iscrowd``) are never targets: they are not windows, and a window that
  overlaps a crowd region by ``>= bg_iou_high`` without being foreground is ignored rather than
  called background, since it may well show the class.
- Ground-truth boxes of zero area (BCCD has two) overlap nothing; they are dropped. So are
  windows under :data:`MIN_WINDOW_SIDE` pixels on a side, which no warp can show.
- An image whose proposals failed (``ImageProposals.error``) or are missing gets its ground-truth
  boxes only (all foreground); such images are counted and reported once.

Sampling (:class:`WindowSampler`). R-CNN drew each batch of 128 windows (32 foreground, 96
background) uniformly across the whole training set. On a CPU that means decoding and
augmenting one image per window; instead an epoch visits every training image once, in a
seeded random order, and each batch draws its 128 windows from ``images_per_batch``
consecutive images of that order (Fast R-CNN's hierarchical sampling). Within a batch the draw
is uniform over the pooled windows of its images, without replacement: ``fg_quota =
round(batch_size * fg_fraction)`` foreground if that many exist, the rest background; when
either kind runs short the other fills in, and a batch whose images hold fewer than
``batch_size`` windows in all is smaller (never padded with duplicates).

Every random number of epoch ``e`` comes from ``numpy.random.SeedSequence([seed, member, e])``,
so the order, the draws, the mirror flags and each batch's augmentation seed depend only on
(seed, member, epoch): members with the same seed but another index see other orders and other
windows (the paper's six members differed only in sampling), and resuming at an epoch boundary
needs no generator state beyond the epoch number.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import numpy as np

from detection.core.boxes import box_iou_numpy
from detection.data.records import Dataset, ImageRecord
from proposals.store import ImageProposals

__all__ = [
    "MIN_WINDOW_SIDE",
    "ImageWindows",
    "WindowStats",
    "WindowBatch",
    "label_windows",
    "build_training_windows",
    "WindowSampler",
]

logger = logging.getLogger(__name__)

#: Windows narrower or shorter than this many pixels are dropped (nothing to warp).
MIN_WINDOW_SIDE = 1.0

BACKGROUND = 0


@dataclass
class ImageWindows:
    """The labelled windows of one training image (F foreground, B background windows).

    Attributes:
        index: position of the image in the dataset's ``records``.
        fg_boxes: ``(F, 4)`` float32 windows with IoU ``>= fg_iou`` to a ground-truth box.
        fg_labels: ``(F,)`` int64 classifier indices (dataset label + 1, so 1..C).
        bg_boxes: ``(B, 4)`` float32 background windows (classifier index 0).
        num_ignored: windows that fell in neither range (or near a crowd region).
        used_proposals: False when the image had no usable proposals (ground truth only).
    """

    index: int
    fg_boxes: np.ndarray
    fg_labels: np.ndarray
    bg_boxes: np.ndarray
    num_ignored: int = 0
    used_proposals: bool = True

    @property
    def num_windows(self) -> int:
        return len(self.fg_boxes) + len(self.bg_boxes)


@dataclass
class WindowStats:
    """Counts over a training set's windows, for the log and for tests."""

    images: int = 0
    foreground: int = 0
    background: int = 0
    ignored: int = 0
    images_without_proposals: int = 0
    images_without_windows: int = 0

    def line(self) -> str:
        return (
            f"{self.images} images, {self.foreground} foreground / {self.background} background windows "
            f"({self.ignored} ignored); {self.images_without_proposals} image(s) on ground truth only, "
            f"{self.images_without_windows} without any window"
        )


@dataclass
class WindowBatch:
    """One training batch of W windows from a few images, in image-major order.

    Attributes:
        image_indices: dataset positions of the batch's images (``b_i > 0`` windows each).
        boxes: one float32 ``(b_i, 4)`` array per image, ``sum b_i = W``.
        labels: ``(W,)`` int64 classifier indices (0 = background), image-major like ``boxes``.
        flips: ``(W,)`` bool, whether to mirror each window's crop left-right.
        aug_seed: seed for this batch's photometric distortions.
    """

    image_indices: list[int]
    boxes: list[np.ndarray]
    labels: np.ndarray
    flips: np.ndarray
    aug_seed: int

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_foreground(self) -> int:
        return int(np.count_nonzero(self.labels != BACKGROUND))


def _usable(boxes: np.ndarray) -> np.ndarray:
    """``(N,)`` bool: boxes at least :data:`MIN_WINDOW_SIDE` wide and high."""
    return ((boxes[:, 2] - boxes[:, 0]) >= MIN_WINDOW_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_WINDOW_SIDE)


def label_windows(
    record: ImageRecord,
    proposal_boxes: np.ndarray | None,
    index: int = 0,
    fg_iou: float = 0.5,
    bg_iou_low: float = 0.0,
    bg_iou_high: float = 0.5,
) -> ImageWindows:
    """Label one image's windows (its proposals plus its ground truth), see the module note.

    Args:
        record: the image's ground truth.
        proposal_boxes: ``(P, 4)`` float32 proposals, or None when the image has none usable.
        index: the image's position in the dataset (kept in the result).
    Returns:
        The image's foreground and background windows; proposals come first, then the
        ground-truth boxes, each kind in its original order.
    """
    crowd = np.asarray(record.crowd, dtype=bool)
    targets = _usable(record.boxes) & ~crowd
    gt_boxes, gt_labels = record.boxes[targets], record.labels[targets]
    proposals = np.zeros((0, 4), np.float32) if proposal_boxes is None else np.asarray(proposal_boxes, np.float32).reshape(-1, 4)
    windows = np.concatenate([proposals, gt_boxes]).astype(np.float32)
    windows = windows[_usable(windows)]

    if len(gt_boxes):
        iou = box_iou_numpy(windows, gt_boxes)
        best = iou.argmax(axis=1)
        max_iou = iou[np.arange(len(windows)), best]
    else:
        best = np.zeros(len(windows), dtype=np.int64)
        max_iou = np.zeros(len(windows), dtype=np.float64)
    foreground = max_iou >= fg_iou
    background = (max_iou >= bg_iou_low) & (max_iou < bg_iou_high) & ~foreground
    crowd_boxes = record.boxes[crowd & _usable(record.boxes)]
    if len(crowd_boxes):
        # A crowd region may hide any number of objects: do not teach that it is background.
        background &= box_iou_numpy(windows, crowd_boxes).max(axis=1) < bg_iou_high
    return ImageWindows(
        index=index,
        fg_boxes=windows[foreground],
        fg_labels=(gt_labels[best[foreground]] + 1).astype(np.int64),
        bg_boxes=windows[background],
        num_ignored=int(len(windows) - foreground.sum() - background.sum()),
        used_proposals=proposal_boxes is not None,
    )


def build_training_windows(
    dataset: Dataset,
    proposals: Mapping[str, ImageProposals],
    fg_iou: float = 0.5,
    bg_iou_low: float = 0.0,
    bg_iou_high: float = 0.5,
) -> tuple[list[ImageWindows], WindowStats]:
    """Label the windows of every image of ``dataset``.

    Args:
        proposals: image id -> stored proposals (``ProposalStore.load_all()``); images missing
            from it, or whose entry has ``error`` set, are trained on their ground truth only.
    Returns:
        The windows of the images that have at least one (images without any are left out and
        counted), and the counts.
    """
    if not 0.0 <= bg_iou_low <= bg_iou_high <= fg_iou:
        raise ValueError(f"need 0 <= bg_iou_low <= bg_iou_high <= fg_iou, got {bg_iou_low}, {bg_iou_high}, {fg_iou}")
    stats = WindowStats()
    result: list[ImageWindows] = []
    for index, record in enumerate(dataset.records):
        item = proposals.get(record.image_id)
        boxes = None if item is None or item.error else item.boxes
        windows = label_windows(record, boxes, index, fg_iou, bg_iou_low, bg_iou_high)
        stats.images += 1
        stats.images_without_proposals += int(boxes is None)
        stats.ignored += windows.num_ignored
        if windows.num_windows == 0:
            stats.images_without_windows += 1
            continue
        stats.foreground += len(windows.fg_boxes)
        stats.background += len(windows.bg_boxes)
        result.append(windows)
    if stats.images_without_proposals:
        logger.warning(
            "%s: %d of %d training image(s) have no usable proposals (failed or missing from the store); "
            "they are trained on their ground-truth boxes only",
            dataset.spec, stats.images_without_proposals, stats.images,
        )
    logger.info("training windows: %s", stats.line())
    return result, stats


class WindowSampler:
    """Batches of R-CNN fine-tuning windows, ``images_per_batch`` images per batch.

    An epoch visits every image in ``windows`` once, in an order drawn from (seed, member,
    epoch); there are ``ceil(len(windows) / images_per_batch)`` batches per epoch (the last
    may cover fewer images). See the module note for the draw within a batch.

    Args:
        windows: the labelled windows of the training images (:func:`build_training_windows`).
        batch_size: windows per batch (R-CNN: 128).
        fg_fraction: share of foreground windows (R-CNN: 0.25, so 32 of 128).
        images_per_batch: images a batch draws from.
        hflip: draw a mirror flag per window with probability 0.5 (else never mirror).
        seed, member: select the random streams (see the module note).
        fg_balance: draw the foreground windows with weights ``1 / n_c`` (``n_c``: windows of
            their class in the batch's pool), so every class present gets about an equal share
            of the quota instead of one proportional to its frequency: a rare class (BCCD's
            platelets, 9% of the boxes and fewer windows each) is then seen as often as a
            common one. Off: uniform, as R-CNN.
    """

    def __init__(
        self,
        windows: list[ImageWindows],
        batch_size: int = 128,
        fg_fraction: float = 0.25,
        images_per_batch: int = 2,
        hflip: bool = True,
        seed: int = 0,
        member: int = 0,
        fg_balance: bool = False,
    ) -> None:
        if batch_size < 1 or images_per_batch < 1:
            raise ValueError(f"batch_size and images_per_batch must be >= 1, got {batch_size}, {images_per_batch}")
        if not 0.0 <= fg_fraction <= 1.0:
            raise ValueError(f"fg_fraction must lie in [0, 1], got {fg_fraction}")
        if not windows:
            raise ValueError("no training windows: the dataset has no image with a usable box or proposal")
        self.windows = windows
        self.batch_size = batch_size
        self.fg_fraction = fg_fraction
        self.images_per_batch = images_per_batch
        self.hflip = hflip
        self.seed = seed
        self.member = member
        self.fg_balance = fg_balance

    @property
    def fg_quota(self) -> int:
        return int(round(self.batch_size * self.fg_fraction))

    def __len__(self) -> int:
        """Batches per epoch."""
        return -(-len(self.windows) // self.images_per_batch)

    def rng(self, epoch: int) -> np.random.Generator:
        """The generator of all of epoch ``epoch``'s draws."""
        return np.random.default_rng(np.random.SeedSequence([self.seed, self.member, epoch]))

    def epoch(self, epoch: int) -> Iterator[WindowBatch]:
        """The batches of epoch ``epoch`` (0-based); the same arguments give the same batches."""
        rng = self.rng(epoch)
        order = rng.permutation(len(self.windows))
        for start in range(0, len(order), self.images_per_batch):
            yield self._draw([self.windows[i] for i in order[start : start + self.images_per_batch]], rng)

    def state_dict(self) -> dict[str, int | float | bool]:
        """What defines the draws (resuming at an epoch boundary needs nothing else)."""
        return {
            "seed": self.seed,
            "member": self.member,
            "batch_size": self.batch_size,
            "fg_fraction": self.fg_fraction,
            "images_per_batch": self.images_per_batch,
            "hflip": self.hflip,
            "images": len(self.windows),
        } | ({"fg_balance": True} if self.fg_balance else {})

    def _fg_weights(self, group: list[ImageWindows]) -> np.ndarray | None:
        """Draw probabilities of the pooled foreground windows: ``1 / n_c`` normalised, or None (uniform)."""
        if not self.fg_balance:
            return None
        labels = np.concatenate([w.fg_labels for w in group] + [np.zeros(0, np.int64)])
        if len(labels) == 0:
            return None
        _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
        weights = 1.0 / counts[inverse]
        return weights / weights.sum()

    def _draw(self, group: list[ImageWindows], rng: np.random.Generator) -> WindowBatch:
        """Draw one batch from the pooled windows of ``group`` (see the module note)."""
        fg_owner = np.concatenate([np.full(len(w.fg_boxes), j) for j, w in enumerate(group)]).astype(np.int64)
        bg_owner = np.concatenate([np.full(len(w.bg_boxes), j) for j, w in enumerate(group)]).astype(np.int64)
        num_fg = min(self.fg_quota, len(fg_owner))
        num_bg = min(self.batch_size - num_fg, len(bg_owner))
        # Too few background windows: foreground fills in (never duplicates).
        num_fg = min(self.batch_size - num_bg, len(fg_owner))
        fg_pick = np.sort(rng.choice(len(fg_owner), size=num_fg, replace=False, p=self._fg_weights(group)))
        bg_pick = np.sort(rng.choice(len(bg_owner), size=num_bg, replace=False))
        fg_offsets = np.concatenate([[0], np.cumsum([len(w.fg_boxes) for w in group])])
        bg_offsets = np.concatenate([[0], np.cumsum([len(w.bg_boxes) for w in group])])

        image_indices: list[int] = []
        boxes: list[np.ndarray] = []
        labels: list[np.ndarray] = []
        for j, windows in enumerate(group):
            fg_local = fg_pick[fg_owner[fg_pick] == j] - fg_offsets[j]
            bg_local = bg_pick[bg_owner[bg_pick] == j] - bg_offsets[j]
            if len(fg_local) + len(bg_local) == 0:
                continue
            image_indices.append(windows.index)
            boxes.append(np.concatenate([windows.fg_boxes[fg_local], windows.bg_boxes[bg_local]]).astype(np.float32))
            labels.append(np.concatenate([windows.fg_labels[fg_local], np.zeros(len(bg_local), np.int64)]))
        label_array = np.concatenate(labels).astype(np.int64)
        flips = rng.random(len(label_array)) < 0.5 if self.hflip else np.zeros(len(label_array), dtype=bool)
        aug_seed = int(rng.integers(0, 2**31 - 1))
        return WindowBatch(image_indices, boxes, label_array, flips, aug_seed)
