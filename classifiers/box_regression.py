"""Class-specific bounding-box regression on the region classifier's pooled features (R-CNN style).

Not in the paper (section 8: "we did not use bounding box regression ... due to lack of time"):
an option, off by default (``box_regression.enabled``) and off in the paper preset.

The recipe is R-CNN's (Girshick et al., 2014, appendix C). A proposal ``P`` matched to a
ground-truth box ``G`` has the targets

    ``tx = (Gx - Px) / Pw``, ``ty = (Gy - Py) / Ph``, ``tw = log(Gw / Pw)``, ``th = log(Gh / Ph)``

with centres and widths in the project's continuous convention (:mod:`detection.boxes`:
``w = x2 - x1``, centre ``x1 + w / 2``; no R-CNN "+1"). Every training proposal (and every
ground-truth box itself) whose best IoU with a ground-truth box is at least ``fg_iou`` (R-CNN:
0.6) is a sample of that box's class, with that box as target. Each class gets its own linear map
from a member's pooled features (the input of the final linear layer, after global average
pooling; :meth:`classifiers.inception.GoogLeNet.forward_with_features`) to the four targets,
fitted by ridge regression in closed form, once per ensemble member.

Features are standardised per class before the fit (mean 0, standard deviation 1 per
dimension over the class's samples) and the intercept is left unpenalised (targets centred).
Why: a narrow member trained from scratch has feature dimensions on wildly different scales
(some ReLU channels nearly dead, a few large), and members and widths differ from one another;
on standardised features ``Z`` the data term is ``Z^T Z = N * R`` (``R`` the correlation matrix),
so one ``ridge_lambda`` shrinks every dimension alike and means the same thing for every member
and width. R-CNN's ``lambda = 1000`` was tuned on its own scale (pool5 features rescaled to a mean
norm of 20), which no other network shares anyway. The unpenalised intercept makes a heavily
regularised class fall back to its mean offset rather than to no offset. The standardisation is
folded back into the stored ``W`` and ``b``, so inference is one matrix product on raw features.
Target scaling (Fast R-CNN's 0.1/0.2 normalisation) is not needed: ridge regression is linear in
the targets. The fit solves the smaller of the primal (``D x D``) and dual (``N x N``) systems,
which give the same answer, so a capped class of a few hundred samples on 1024-d features costs
a few hundred squared, not 1024 cubed.

At detection time (:mod:`detection.pipeline`) each member predicts the deltas of every proposal
for every class; the ensemble's deltas are the mean over its members, and class ``c``'s
detections use the boxes moved by class ``c``'s deltas, clipped to the image, before per-class
NMS (R-CNN's order). ``dw`` and ``dh`` are clipped at ``log(1000 / 16)`` first, as detectron
does, so that no prediction can blow a box up by more than ~62x.

Files. Member ``m``'s regressor is ``box_regressor{m}.pt`` beside ``member{m}.pt`` (a checkpoint
of :mod:`detection.checkpoints`, kind ``box_regressor``, written atomically). It records the
class list, the member's index and the digest of the member file it was fitted on, the data's
fingerprint and the section's settings; a finished file with the same identity is reused, one
made for another member, class list or configuration is refused with the first difference.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from detection import distributed
from detection.atomic import file_digest
from detection.boxes import box_iou_numpy
from detection.checkpoints import CheckpointError, first_difference, load_checkpoint, save_checkpoint
from detection.images import TRUNCATED_IMAGE, truncated_fault
from detection.problems import DataError, WarningTally
from detection.records import Dataset, ImageRecord

if TYPE_CHECKING:  # classifiers.ensemble imports this module
    from classifiers.ensemble import Ensemble

__all__ = [
    "BBOX_XFORM_CLIP",
    "REGRESSOR_KIND",
    "BoxRegressionConfig",
    "BoxRegressor",
    "RegressionSamples",
    "regression_targets",
    "apply_deltas",
    "fit_ridge",
    "fit_box_regressor",
    "match_proposals",
    "regression_samples",
    "regressor_path",
    "save_box_regressor",
    "load_box_regressor",
    "fit_box_regressors",
]

logger = logging.getLogger(__name__)

#: Largest log-scale change of width or height a delta may ask for (detectron's clip).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)

REGRESSOR_KIND = "box_regressor"

#: Boxes narrower or shorter than this (pixels) are never samples: their targets divide by it.
_MIN_SIDE = 1.0


@dataclass
class BoxRegressionConfig:
    """The ``box_regression`` section (not in the paper; off by default).

    Attributes:
        enabled: fit a regressor per member after training and refine detections with it;
            the benchmark then adds an "ensemble + box regression" row.
        fg_iou: windows overlapping a ground-truth box at least this much train its class's
            regressor, with that box as target (R-CNN: 0.6).
        ridge_lambda: ridge penalty on standardised features (R-CNN: 1000; see the module note).
        max_samples_per_class: at most this many samples per class, drawn at random: the
            features of every sample come from one forward pass per member, so the cap bounds
            the cost on a CPU.
        min_samples_per_class: a class with fewer samples keeps its proposals' boxes (zero
            deltas) and is reported in a counted warning.
        seed: the draw of the capped samples.
    """

    enabled: bool = False
    fg_iou: float = 0.6
    ridge_lambda: float = 1000.0
    max_samples_per_class: int = 500
    min_samples_per_class: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 < self.fg_iou <= 1.0:
            raise ValueError(f"fg_iou must lie in (0, 1], got {self.fg_iou}")
        if not self.ridge_lambda > 0:
            raise ValueError(f"ridge_lambda must be > 0, got {self.ridge_lambda}")
        if not 1 <= self.min_samples_per_class <= self.max_samples_per_class:
            raise ValueError(
                f"need 1 <= min_samples_per_class <= max_samples_per_class, got {self.min_samples_per_class}, {self.max_samples_per_class}"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")

    def identity(self) -> dict[str, Any]:
        """The settings a fitted regressor depends on (everything but ``enabled``)."""
        fields = dataclasses.asdict(self)
        fields.pop("enabled")
        return fields


# ----------------------------------------------------------------------------- box algebra


def _centres_and_sizes(boxes: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(N, 4)`` boxes -> centre x, centre y, width, height, each ``(N,)``."""
    widths = boxes[:, 2] - boxes[:, 0]
    heights = boxes[:, 3] - boxes[:, 1]
    return boxes[:, 0] + 0.5 * widths, boxes[:, 1] + 0.5 * heights, widths, heights


def regression_targets(proposals: Tensor, gt: Tensor) -> Tensor:
    """R-CNN targets ``(tx, ty, tw, th)`` that move each proposal onto its ground-truth box.

    Args:
        proposals: ``(N, 4)`` boxes ``(x1, y1, x2, y2)`` with positive width and height.
        gt: ``(N, 4)`` the matched ground-truth box of each proposal.
    Returns:
        ``(N, 4)`` in the dtype of ``proposals`` (float32 for integer input);
        ``apply_deltas(proposals, regression_targets(proposals, gt))`` gives ``gt`` back.
    """
    if proposals.shape != gt.shape or proposals.dim() != 2 or proposals.shape[-1] != 4:
        raise ValueError(f"need two (N, 4) tensors, got {tuple(proposals.shape)} and {tuple(gt.shape)}")
    dtype = proposals.dtype if proposals.is_floating_point() else torch.float32
    px, py, pw, ph = _centres_and_sizes(proposals.to(dtype))
    gx, gy, gw, gh = _centres_and_sizes(gt.to(dtype))
    return torch.stack([(gx - px) / pw, (gy - py) / ph, torch.log(gw / pw), torch.log(gh / ph)], dim=1)


def apply_deltas(
    boxes: Tensor, deltas: Tensor, image_size: tuple[int, int] | None = None, clip: float = BBOX_XFORM_CLIP
) -> Tensor:
    """Move boxes by R-CNN deltas: the inverse of :func:`regression_targets`.

    Args:
        boxes: ``(N, 4)`` boxes ``(x1, y1, x2, y2)``.
        deltas: ``(N, 4)`` ``(dx, dy, dw, dh)``, one row per box.
        image_size: ``(height, width)`` (an image array's ``shape[:2]``): clip the result to
            ``[0, width] x [0, height]``; None leaves it unclipped.
        clip: ``dw`` and ``dh`` are clamped to at most this (``log(1000 / 16)``, detectron's), so
            one bad prediction cannot overflow ``exp``.
    Returns:
        ``(N, 4)`` boxes in the dtype of ``boxes`` (float32 for integer input).
    """
    if boxes.shape != deltas.shape or boxes.dim() != 2 or boxes.shape[-1] != 4:
        raise ValueError(f"need two (N, 4) tensors, got {tuple(boxes.shape)} and {tuple(deltas.shape)}")
    dtype = boxes.dtype if boxes.is_floating_point() else torch.float32
    cx, cy, widths, heights = _centres_and_sizes(boxes.to(dtype))
    deltas = deltas.to(dtype)
    centre_x = cx + deltas[:, 0] * widths
    centre_y = cy + deltas[:, 1] * heights
    half_w = 0.5 * widths * torch.exp(deltas[:, 2].clamp(max=clip))
    half_h = 0.5 * heights * torch.exp(deltas[:, 3].clamp(max=clip))
    moved = torch.stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h], dim=1)
    if image_size is not None:
        height, width = image_size
        moved[:, 0::2] = moved[:, 0::2].clamp(0, width)
        moved[:, 1::2] = moved[:, 1::2].clamp(0, height)
    return moved


# ----------------------------------------------------------------------------- the fit


def fit_ridge(features: Tensor, targets: Tensor, ridge_lambda: float) -> tuple[Tensor, Tensor]:
    """Ridge regression on standardised features with an unpenalised intercept, in closed form.

    Minimises ``sum_i ||t_i - W^T x_i - b||^2 + lambda * ||W S||^2`` where ``S`` holds the
    features' standard deviations (i.e. the usual ridge on standardised features), see the
    module note. Solved in float64 with :func:`torch.linalg.solve`, in the primal ``(D x D)``
    or the dual ``(N x N)`` form, whichever is smaller (they agree).

    Args:
        features: ``(N, D)`` with N >= 1.
        targets: ``(N, K)``.
        ridge_lambda: the penalty, > 0.
    Returns:
        ``weight (D, K)`` and ``bias (K,)`` (float32) on raw features: predictions are
        ``features @ weight + bias``.
    """
    if features.dim() != 2 or targets.dim() != 2 or len(features) != len(targets) or len(features) == 0:
        raise ValueError(f"need features (N, D) and targets (N, K) with N >= 1, got {tuple(features.shape)}, {tuple(targets.shape)}")
    if not ridge_lambda > 0:
        raise ValueError(f"ridge_lambda must be > 0, got {ridge_lambda}")
    x = features.detach().to("cpu", torch.float64)
    t = targets.detach().to("cpu", torch.float64)
    mean, target_mean = x.mean(dim=0), t.mean(dim=0)
    std = x.std(dim=0, correction=0)
    # A constant dimension (a dead ReLU channel) standardises to zeros and gets weight 0.
    std = torch.where(std > 1e-12, std, torch.ones_like(std))
    z = (x - mean) / std
    centred = t - target_mean
    n, d = z.shape
    if n >= d:
        weight_z = torch.linalg.solve(z.T @ z + ridge_lambda * torch.eye(d, dtype=z.dtype), z.T @ centred)
    else:
        weight_z = z.T @ torch.linalg.solve(z @ z.T + ridge_lambda * torch.eye(n, dtype=z.dtype), centred)
    weight = weight_z / std[:, None]
    bias = target_mean - mean @ weight
    return weight.float(), bias.float()


@dataclass
class BoxRegressor:
    """One member's class-specific linear regressors (C classes, D features).

    Attributes:
        weight: ``(C, D, 4)``; class ``c``'s deltas of features ``f`` are ``f @ weight[c] + bias[c]``.
        bias: ``(C, 4)``.
        num_samples: ``(C,)`` int64, the samples each class was fitted on; a class with too few
            has zero weight and bias (its boxes stay as proposed).
    """

    weight: Tensor
    bias: Tensor
    num_samples: Tensor

    def __post_init__(self) -> None:
        c, d, k = self.weight.shape if self.weight.dim() == 3 else (-1, -1, -1)
        if k != 4 or tuple(self.bias.shape) != (c, 4) or tuple(self.num_samples.shape) != (c,):
            raise ValueError(
                f"a box regressor needs weight (C, D, 4), bias (C, 4), num_samples (C,); got "
                f"{tuple(self.weight.shape)}, {tuple(self.bias.shape)}, {tuple(self.num_samples.shape)}"
            )

    @property
    def num_classes(self) -> int:
        return int(self.weight.shape[0])

    @property
    def num_features(self) -> int:
        return int(self.weight.shape[1])

    def to(self, device: torch.device | str) -> BoxRegressor:
        """A copy with ``weight`` and ``bias`` on ``device`` (float32)."""
        return BoxRegressor(self.weight.to(device, torch.float32), self.bias.to(device, torch.float32), self.num_samples.cpu())

    def predict(self, features: Tensor) -> Tensor:
        """Deltas of every class: features ``(N, D)`` -> ``(N, C, 4)`` float32 (on the weights' device)."""
        if features.dim() != 2 or features.shape[1] != self.num_features:
            raise ValueError(f"features must be (N, {self.num_features}), got {tuple(features.shape)}")
        return torch.einsum("nd,cdk->nck", features.to(self.weight.device, torch.float32), self.weight) + self.bias

    def state_dict(self) -> dict[str, Tensor]:
        return {"weight": self.weight.detach().cpu(), "bias": self.bias.detach().cpu(), "num_samples": self.num_samples.detach().cpu()}


def fit_box_regressor(
    features: Tensor,
    targets: Tensor,
    labels: Tensor,
    num_classes: int,
    ridge_lambda: float = 1000.0,
    min_samples: int = 10,
    class_names: Sequence[str] | None = None,
    source: str = "box regression",
) -> BoxRegressor:
    """One ridge regressor per class (:func:`fit_ridge`) on that class's samples.

    Args:
        features: ``(N, D)`` pooled features of the samples.
        targets: ``(N, 4)`` their :func:`regression_targets`.
        labels: ``(N,)`` int dataset class of each sample, ``0 .. num_classes - 1``.
        num_classes: C.
        ridge_lambda: the penalty of every class's fit.
        min_samples: classes with fewer samples get the identity (zero deltas) and a counted
            warning naming them.
        class_names: names for the warning (default: the indices).
        source: what the warning is about, e.g. ``"box regression, member 0"``.
    Returns:
        A :class:`BoxRegressor` with weight ``(C, D, 4)`` on the CPU.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64).reshape(-1).cpu()
    if features.dim() != 2 or len(features) != len(targets) or len(features) != len(labels):
        raise ValueError(f"features (N, D), targets (N, 4) and labels (N,) disagree: {tuple(features.shape)}, {tuple(targets.shape)}, {tuple(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got {labels.min().item()}..{labels.max().item()}")
    dim = features.shape[1]
    weight = torch.zeros((num_classes, dim, 4))
    bias = torch.zeros((num_classes, 4))
    counts = torch.bincount(labels, minlength=num_classes)
    tally = WarningTally(source, logger)
    for c in range(num_classes):
        if counts[c] < min_samples:
            name = class_names[c] if class_names is not None else str(c)
            tally.warn("too few samples, boxes kept as proposed", f"class {name}", f"{int(counts[c])} < {min_samples}")
            continue
        chosen = labels == c
        weight[c], bias[c] = fit_ridge(features[chosen.to(features.device)], targets[chosen.to(targets.device)], ridge_lambda)
    tally.log_summary()
    return BoxRegressor(weight, bias, counts)


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


# ----------------------------------------------------------------------------- files


def regressor_path(directory: str | Path, member: int) -> Path:
    """Where member ``member``'s regressor lives: ``directory/box_regressor{member}.pt``."""
    return Path(directory) / f"box_regressor{member}.pt"


def save_box_regressor(path: str | Path, regressor: BoxRegressor, identity: dict[str, Any], classes: list[str]) -> Path:
    """Write ``regressor`` atomically as a ``box_regressor`` checkpoint with ``identity`` as its config.

    ``identity`` holds ``member`` (``{"index": m, "checkpoint": digest of member{m}.pt}``) and
    whatever else the fit depended on (see :func:`fit_box_regressors`).
    """
    if regressor.num_classes != len(classes):
        raise ValueError(f"regressor has {regressor.num_classes} classes, class list {len(classes)}")
    return save_checkpoint(path, REGRESSOR_KIND, identity, classes, regressor.state_dict())


def load_box_regressor(path: str | Path, classes: list[str], member: int | None = None, member_digest: str | None = None) -> BoxRegressor:
    """Read a regressor written by :func:`save_box_regressor`, on the CPU.

    Args:
        classes: the class list it must have been fitted for.
        member: the ensemble member it must belong to (None: any).
        member_digest: :func:`detection.atomic.file_digest` of that member's checkpoint; a
            regressor fitted on another version of the member is refused (None: not checked).
    Raises:
        detection.checkpoints.CheckpointError: another kind of file, class list, member or member
            version, or tensors of the wrong shape; the message names the file.
    """
    payload = load_checkpoint(path, REGRESSOR_KIND, classes=classes)
    stored = (payload.get("config") or {}).get("member") or {}
    if member is not None and stored.get("index") != member:
        raise CheckpointError(f"{path}: box regressor of member {stored.get('index')}, not of member {member}")
    if member_digest is not None and stored.get("checkpoint") != member_digest:
        raise CheckpointError(
            f"{path}: fitted on another version of member {stored.get('index')}'s checkpoint "
            f"({stored.get('checkpoint')} vs {member_digest}); delete it and fit it again"
        )
    try:
        tensors = payload["model"]
        regressor = BoxRegressor(tensors["weight"].float(), tensors["bias"].float(), tensors["num_samples"].long())
    except (KeyError, ValueError, AttributeError) as error:
        raise CheckpointError(f"{path}: not a usable box regressor ({error})") from None
    if regressor.num_classes != len(classes):
        raise CheckpointError(f"{path}: holds {regressor.num_classes} classes, the class list has {len(classes)}")
    return regressor


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


@contextlib.contextmanager
def _torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run with ``num_threads`` torch CPU threads (None: unchanged), restoring the count after."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _member_features(ensemble: Ensemble, dataset: Dataset, samples: RegressionSamples, progress: bool) -> tuple[list[Tensor], np.ndarray]:
    """Each member's pooled features of every sample's warped window.

    Windows are warped exactly as at detection time (:meth:`classifiers.ensemble.Ensemble.warp`:
    no mirroring, no colour distortion) and scored in groups of whole images of at most about
    ``ensemble.crops_per_batch`` crops.

    Returns:
        ``M`` tensors ``(S', D_m)`` float32 on the CPU, and the ``(S,)`` bool mask of the samples
        they cover (those of unreadable images are dropped, with a counted warning).
    """
    from detection.progress import progress_bar

    tally = WarningTally(f"box regression {dataset.spec}", logger)
    covered = np.zeros(len(samples), dtype=bool)
    parts: list[list[Tensor]] = [[] for _ in ensemble.models]
    starts = np.flatnonzero(np.r_[True, samples.image_indices[1:] != samples.image_indices[:-1]]) if len(samples) else np.zeros(0, np.int64)
    stops = np.r_[starts[1:], len(samples)].astype(np.int64)
    group: list[tuple[np.ndarray, slice]] = []
    bar = progress_bar(total=len(starts), desc="box regression features", unit="img", disable=not progress)

    def flush() -> None:
        if not group:
            return
        crops = ensemble.warp([image for image, _ in group], [samples.boxes[span] for _, span in group])
        _, features = ensemble.scorer.score_with_features(crops)
        for part, member_features in zip(parts, features):
            part.append(member_features.float().cpu())
        bar.update(len(group))
        group.clear()

    pending = 0
    for start, stop in zip(starts, stops):
        index = int(samples.image_indices[start])
        try:
            image = dataset.load_image(index)
        except DataError as error:
            tally.warn("unreadable image, its samples dropped", error.path, error.fault)
            bar.update(1)
            continue
        if truncated_fault(dataset[index].path):
            tally.count(TRUNCATED_IMAGE)
        if pending and pending + (stop - start) > ensemble.crops_per_batch:
            flush()
            pending = 0
        group.append((image, slice(int(start), int(stop))))
        covered[start:stop] = True
        pending += int(stop - start)
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
    from classifiers.ensemble import Ensemble, member_paths

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
        with _torch_threads(num_threads):
            samples = regression_samples(dataset, proposals, config.fg_iou, config.max_samples_per_class, config.seed)
            logger.info(
                "box regression: %d samples (IoU >= %.2f, at most %d per class) for member(s) %s",
                len(samples), config.fg_iou, config.max_samples_per_class, todo,
            )
            ensemble = Ensemble.from_dir(members_dir, dataset.classes, ",".join(map(str, todo)) + ",", device)
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
