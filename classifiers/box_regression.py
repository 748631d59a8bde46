"""Class-specific bounding-box regression (R-CNN, Girshick et al. 2014, appendix C): the maths and the files.

Not in the paper (section 8 ran out of time for it): an option, off by default. A proposal ``P``
matched to a ground-truth box ``G`` has the targets ``tx = (Gx - Px) / Pw``, ``ty = (Gy - Py) / Ph``,
``tw = log(Gw / Pw)``, ``th = log(Gh / Ph)`` (centres and sizes in the continuous convention of
:mod:`detection.core.boxes`); each class gets a ridge regression from a member's pooled features
to them (:func:`fit_ridge`, on standardised features, see there why). Member ``m``'s regressor is
the checkpoint ``box_regressor{m}.pt`` beside ``member{m}.pt``. Fitting them from a trained
ensemble is :mod:`classifiers.box_regression_train`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from detection.core.checkpoints import CheckpointError, load_checkpoint, save_checkpoint
from detection.core.problems import WarningTally

__all__ = [
    "BBOX_XFORM_CLIP",
    "REGRESSOR_KIND",
    "BoxRegressionConfig",
    "BoxRegressor",
    "regression_targets",
    "apply_deltas",
    "fit_ridge",
    "fit_box_regressor",
    "regressor_path",
    "save_box_regressor",
    "load_box_regressor",
]

logger = logging.getLogger(__name__)

#: Largest log-scale change of width or height a delta may ask for (detectron's clip).
BBOX_XFORM_CLIP = math.log(1000.0 / 16)

REGRESSOR_KIND = "box_regressor"


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
        member_digest: :func:`detection.core.atomic.file_digest` of that member's checkpoint; a
            regressor fitted on another version of the member is refused (None: not checked).
    Raises:
        detection.core.checkpoints.CheckpointError: another kind of file, class list, member or member
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

