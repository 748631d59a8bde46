"""MultiBox (Erhan et al., CVPR 2014): a network that regresses K boxes with a confidence each.

The GoogLeNet detection entry adds 200 MultiBox boxes to its Selective Search proposals. This
module holds everything but the training loop (:mod:`proposals.multibox_train`):

- :class:`MultiBoxConfig`: the settings, loadable from YAML (``configs/multibox_*.yaml``).
- :func:`kmeans_priors`: the K prior boxes, k-means centres of the training set's ground-truth
  boxes in normalised image coordinates.
- :class:`MultiBox`: the Inception trunk of :mod:`classifiers.inception` (one implementation of
  the network in this project), global average pooling, dropout, and two linear layers that
  predict, for each prior ``i``, an offset ``(4,)`` (box ``l_i = prior_i + offset_i``) and a
  confidence logit (``c_i = sigmoid(logit_i)``).
- :func:`multibox_loss`: the matching loss of the MultiBox paper.
- :class:`MultiBoxProposer`: a trained checkpoint turned into per-image proposals in pixels.

Coordinates inside the network are normalised: ``(x1, y1, x2, y2)`` divided by the image's
``(W, H, W, H)``, so ``[0, 1]`` spans the image whatever its size. Images are *warped* to the
square ``input_size`` (no aspect ratio kept, no padding): a normalised box means the same
region of the original image and of the warped one, so no coordinate bookkeeping is needed and
the priors cover the whole input. Pixel boxes follow the project's convention (0-based
continuous, see :mod:`detection.core.boxes`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from classifiers.inception import IMAGENET_MEAN, IMAGENET_STD, GoogLeNet, GoogLeNetConfig
from classifiers.inception_weights import load_weights
from detection.core.boxes import nms
from detection.core.checkpoints import CheckpointError, load_checkpoint
from detection.core.config_io import ConfigError, from_dict, to_dict
from detection.core.devices import autocast, prepare_model, resolve_device
from detection.data.records import Dataset
from proposals.store import SOURCES, ImageProposals

__all__ = [
    "CHECKPOINT_KIND",
    "CHECKPOINT_NAME",
    "MultiBoxBackbone",
    "MultiBoxConfig",
    "architecture_of",
    "backbone_config",
    "normalised_boxes",
    "scale_weights",
    "kmeans_priors",
    "dataset_priors",
    "prepare_image",
    "image_tensor",
    "MultiBox",
    "match_predictions",
    "multibox_loss",
    "decode_proposals",
    "MultiBoxProposer",
]

logger = logging.getLogger(__name__)

CHECKPOINT_KIND = "multibox"
CHECKPOINT_NAME = "multibox.pt"

#: Inputs are normalised as torchvision's classifiers expect, so a trunk initialised from
#: ImageNet weights sees what it was trained on.
IMAGE_MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
IMAGE_STD = np.array(IMAGENET_STD, dtype=np.float32)

#: Boxes narrower or lower than this many pixels (after clipping) are not proposals.
MIN_BOX_SIDE = 1.0
#: k-means runs on at most this many boxes (a seeded sample): ILSVRC has ~500k, and the centres
#: of a 100k sample are as good at a fraction of the cost.
MAX_KMEANS_BOXES = 100_000
#: Smallest side, in normalised units, of a padded (jittered) prior.
MIN_PRIOR_SIDE = 0.01


# ---------------------------------------------------------------------------------------------
# Configuration


@dataclass(frozen=True)
class MultiBoxBackbone:
    """The Inception trunk's options (fields of :class:`classifiers.inception.GoogLeNetConfig`).

    ``weights: imagenet`` needs the torchvision layout: ``batch_norm: true``,
    ``branch5x5: "3x3"``, ``pooling: torchvision``, ``width: 1.0`` (and ``transform_input: true``
    for the [-1, 1] input scaling those weights were trained on).
    """

    width: float = 0.25
    batch_norm: bool = True
    branch5x5: Literal["5x5", "3x3"] = "5x5"
    pooling: Literal["paper", "torchvision"] = "paper"
    transform_input: bool = False


@dataclass(frozen=True)
class MultiBoxConfig:
    """Settings of a MultiBox network, its training and its inference.

    The defaults are the CPU-sized preset (``configs/multibox_cpu.yaml``) but for
    ``cache_images``, off by default; ``configs/multibox_paper.yaml`` holds the paper's setting
    (K = 800 priors, 224 px, width 1.0, step schedule).

    Architecture (a checkpoint is only usable with the same values; see :func:`architecture_of`):
        num_priors: K, the number of boxes predicted per image.
        input_size: side S of the square the images are warped to.
        backbone: the Inception trunk (:class:`MultiBoxBackbone`).

    Model and loss:
        weights: trunk initialisation: None (random), ``"imagenet"`` (torchvision's cached file)
            or a path to a GoogLeNet state_dict / checkpoint (its classifier is ignored); see
            :func:`classifiers.inception_weights.load_weights`.
        dropout: dropout on the pooled features before the two heads.
        alpha: weight of the location term against the confidence term (0.3 in the MultiBox paper).
        matching: ``"priors"``: ground truth is matched to the nearest priors (the MultiBox
            paper's "prior matching"); ``"predictions"``: to the predictions, by location and
            confidence (the paper's plain objective). See :func:`multibox_loss`.

    Inference:
        top_k: boxes kept per image (200 in the GoogLeNet entry).
        nms_iou: class-agnostic NMS threshold applied before ``top_k``; None: no NMS.

    Training (:func:`proposals.multibox_train.train_multibox`):
        epochs, batch_size, lr, momentum, weight_decay: SGD with momentum.
        grad_clip: largest gradient norm (clipped above it); None: no clipping.
        schedule: ``"step"``: ``lr * lr_decay ** (epoch // decay_epochs)`` (the paper: 4% down
            every 8 epochs); ``"cosine"``: cosine from ``lr`` to 0 over ``epochs``.
        polyak_decay: decay of the exponential moving average of the weights kept for the final
            model (Polyak averaging); early updates use ``min(decay, (1 + n) / (10 + n))`` after
            ``n`` steps, so short runs are not dominated by the initial weights.
        seed: every random step of training (priors, initialisation, order, flips, dropout).
        hflip: mirror half the training images at random (boxes mirrored too).
        num_workers: DataLoader worker processes (results do not depend on it).
        cache_images: keep every warped training image in memory (``S*S*3`` bytes each, per
            worker) instead of decoding it again each epoch.
        kmeans_n_init: k-means restarts when computing the priors.
        prior_balance: ``"none"``: k-means weighs every training box alike, so the priors crowd
            where boxes are common; ``"scale"``: each box weighs ``1 / n`` of its scale band
            (half-octave bands of ``sqrt(area)``, see :func:`scale_weights`), so every object
            size present in training gets priors, the rare small ones too.
    """

    num_priors: int = 100
    input_size: int = 128
    backbone: MultiBoxBackbone = field(default_factory=MultiBoxBackbone)
    weights: str | None = None
    dropout: float = 0.4
    alpha: float = 0.3
    matching: Literal["priors", "predictions"] = "priors"
    top_k: int = 200
    nms_iou: float | None = None
    epochs: int = 40
    batch_size: int = 32
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    grad_clip: float | None = 10.0
    schedule: Literal["step", "cosine"] = "cosine"
    lr_decay: float = 0.96
    decay_epochs: int = 8
    polyak_decay: float = 0.999
    seed: int = 0
    hflip: bool = True
    num_workers: int = 0
    cache_images: bool = False
    kmeans_n_init: int = 3
    prior_balance: Literal["none", "scale"] = "none"

    def __post_init__(self) -> None:
        checks: list[tuple[bool, str]] = [
            (self.num_priors >= 1, f"num_priors must be >= 1, got {self.num_priors}"),
            (self.input_size >= 32, f"input_size must be >= 32, got {self.input_size}"),
            (self.backbone.width > 0, f"backbone.width must be > 0, got {self.backbone.width}"),
            (0.0 <= self.dropout < 1.0, f"dropout must lie in [0, 1), got {self.dropout}"),
            (self.alpha >= 0, f"alpha must be >= 0, got {self.alpha}"),
            (self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}"),
            (self.nms_iou is None or 0.0 < self.nms_iou <= 1.0, f"nms_iou must lie in (0, 1] or be null, got {self.nms_iou}"),
            (self.epochs >= 0, f"epochs must be >= 0, got {self.epochs}"),
            (self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"lr must be > 0, got {self.lr}"),
            (0.0 <= self.momentum < 1.0, f"momentum must lie in [0, 1), got {self.momentum}"),
            (self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (self.grad_clip is None or self.grad_clip > 0, f"grad_clip must be > 0 or null, got {self.grad_clip}"),
            (0.0 < self.lr_decay <= 1.0, f"lr_decay must lie in (0, 1], got {self.lr_decay}"),
            (self.decay_epochs >= 1, f"decay_epochs must be >= 1, got {self.decay_epochs}"),
            (0.0 <= self.polyak_decay < 1.0, f"polyak_decay must lie in [0, 1), got {self.polyak_decay}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.num_workers >= 0, f"num_workers must be >= 0, got {self.num_workers}"),
            (self.kmeans_n_init >= 1, f"kmeans_n_init must be >= 1, got {self.kmeans_n_init}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(f"multibox config: {message}")


def architecture_of(config: MultiBoxConfig | dict[str, Any]) -> dict[str, Any]:
    """The config entries a checkpoint's weights depend on: num_priors, input_size, backbone."""
    values = to_dict(config) if isinstance(config, MultiBoxConfig) else config
    return {key: values.get(key) for key in ("num_priors", "input_size", "backbone")}


def backbone_config(config: MultiBoxConfig) -> Any:
    """The :class:`GoogLeNetConfig` of the trunk (auxiliary heads off; its classifier unused)."""
    b = config.backbone
    return GoogLeNetConfig(
        num_classes=1,
        input_size=config.input_size,
        width=b.width,
        batch_norm=b.batch_norm,
        branch5x5=b.branch5x5,
        pooling=b.pooling,
        aux_logits=False,
        transform_input=b.transform_input,
    )


# ---------------------------------------------------------------------------------------------
# Priors


def normalised_boxes(dataset: Dataset, mirror: bool = False) -> np.ndarray:
    """Every ground-truth box of ``dataset`` divided by its image's size: ``(M, 4)`` float64 in [0, 1].

    Boxes of zero width or height are left out. ``mirror`` adds the left-right mirror of each
    box, matching training with horizontal flips.
    """
    parts = []
    for record in dataset:
        if record.num_boxes == 0 or record.width <= 0 or record.height <= 0:
            continue
        scale = np.array([record.width, record.height, record.width, record.height], dtype=np.float64)
        boxes = np.clip(record.boxes.astype(np.float64) / scale, 0.0, 1.0)
        parts.append(boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])])
    boxes = np.concatenate(parts + [np.zeros((0, 4))])
    if mirror and len(boxes):
        boxes = np.concatenate([boxes, np.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], axis=1)])
    return boxes


def _ordered(boxes: np.ndarray) -> np.ndarray:
    """``(K, 4)`` boxes with x1 <= x2 and y1 <= y2, clipped to [0, 1], each side >= MIN_PRIOR_SIDE."""
    x1, x2 = np.minimum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 0], boxes[:, 2])
    y1, y2 = np.minimum(boxes[:, 1], boxes[:, 3]), np.maximum(boxes[:, 1], boxes[:, 3])
    out = np.clip(np.stack([x1, y1, x2, y2], axis=1), 0.0, 1.0)
    for lo, hi in ((0, 2), (1, 3)):
        short = out[:, hi] - out[:, lo] < MIN_PRIOR_SIDE
        out[short, hi] = np.minimum(out[short, lo] + MIN_PRIOR_SIDE, 1.0)
        out[short, lo] = out[short, hi] - MIN_PRIOR_SIDE
    return out


def _sorted_rows(boxes: np.ndarray) -> np.ndarray:
    # k-means numbers its clusters arbitrarily; a fixed order makes priors comparable across runs.
    return boxes[np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0]))]


def scale_weights(boxes: np.ndarray) -> np.ndarray:
    """``(M,)`` k-means weights that give every scale band the same total: ``1 / n_band``.

    A box's band is ``floor(2 * log2(sqrt(area)))`` of its normalised area (half-octave steps),
    so boxes within a factor of about 1.4 in side share one.
    """
    sides = np.sqrt(np.maximum((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]), 1e-12))
    _, inverse, counts = np.unique(np.floor(2.0 * np.log2(sides)), return_inverse=True, return_counts=True)
    return 1.0 / counts[inverse.reshape(-1)]


def kmeans_priors(boxes: np.ndarray, num_priors: int, seed: int, n_init: int = 3, weights: np.ndarray | None = None) -> np.ndarray:
    """K prior boxes: k-means centres of normalised ground-truth boxes.

    Args:
        boxes: ``(M, 4)`` normalised ``(x1, y1, x2, y2)`` in [0, 1] (see :func:`normalised_boxes`).
        num_priors: K.
        seed: k-means' ``random_state`` and the seed of any sampling or padding.
        n_init: k-means restarts.
        weights: ``(M,)`` per-box k-means weights (e.g. :func:`scale_weights`); None: equal.

    Returns:
        ``(K, 4)`` float32 in [0, 1], rows sorted lexicographically; the same for the same inputs.

    With fewer distinct boxes than K, every distinct box becomes a prior and the rest are
    jittered copies of them (Gaussian noise, 0.05 of the image side); with no boxes at all, the
    priors are random boxes. Both cases are logged.
    """
    from sklearn.cluster import KMeans  # scikit-learn loads slowly; only to make priors

    rng = np.random.default_rng(seed)
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    if len(boxes) > MAX_KMEANS_BOXES:
        sample = np.sort(rng.choice(len(boxes), MAX_KMEANS_BOXES, replace=False))
        boxes, weights = boxes[sample], None if weights is None else np.asarray(weights)[sample]
    distinct = np.unique(boxes, axis=0)
    if len(distinct) == 0:
        logger.warning("no ground-truth boxes to cluster: using %d random priors", num_priors)
        centres = rng.uniform(0.2, 0.8, size=(num_priors, 2))
        sides = rng.uniform(0.1, 0.8, size=(num_priors, 2))
        priors = np.concatenate([centres - sides / 2, centres + sides / 2], axis=1)
    elif len(distinct) <= num_priors:
        extra = num_priors - len(distinct)
        if extra:
            logger.warning(
                "only %d distinct ground-truth boxes for %d priors: padding with %d jittered copies", len(distinct), num_priors, extra
            )
        copies = distinct[rng.integers(0, len(distinct), size=extra)] + rng.normal(0.0, 0.05, size=(extra, 4))
        priors = np.concatenate([distinct, copies])
    else:
        kmeans = KMeans(n_clusters=num_priors, n_init=n_init, random_state=seed)
        priors = kmeans.fit(boxes, sample_weight=weights).cluster_centers_
    return _sorted_rows(_ordered(priors)).astype(np.float32)


def dataset_priors(dataset: Dataset, config: MultiBoxConfig) -> np.ndarray:
    """:func:`kmeans_priors` of ``dataset``'s boxes (mirrored too when training flips): ``(K, 4)`` float32."""
    boxes = normalised_boxes(dataset, mirror=config.hflip)
    weights = scale_weights(boxes) if config.prior_balance == "scale" and len(boxes) else None
    logger.info("k-means over %d normalised boxes for %d priors (balance: %s)", len(boxes), config.num_priors, config.prior_balance)
    return kmeans_priors(boxes, config.num_priors, config.seed, config.kmeans_n_init, weights)


# ---------------------------------------------------------------------------------------------
# Images


def prepare_image(image: np.ndarray, size: int) -> np.ndarray:
    """Warp a uint8 RGB ``(H, W, 3)`` image to ``(size, size, 3)`` uint8 (aspect ratio not kept).

    Area interpolation when shrinking (it averages instead of skipping pixels), bilinear otherwise.
    """
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected a uint8 RGB (H, W, 3) image, got {image.dtype} {image.shape}")
    height, width = image.shape[:2]
    if (height, width) == (size, size):
        return np.ascontiguousarray(image)
    shrinking = height >= size and width >= size
    return cv2.resize(np.ascontiguousarray(image), (size, size), interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR)


def image_tensor(warped: np.ndarray) -> Tensor:
    """uint8 ``(S, S, 3)`` RGB -> float32 ``(3, S, S)`` normalised with ImageNet mean and std."""
    pixels = (warped.astype(np.float32) / 255.0 - IMAGE_MEAN) / IMAGE_STD
    return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))


# ---------------------------------------------------------------------------------------------
# Model


class MultiBox(nn.Module):
    """Inception trunk + K box regressors with confidences.

    ``forward``: images ``(N, 3, S, S)`` normalised -> ``locations (N, K, 4)`` normalised
    ``(x1, y1, x2, y2)`` (prior + predicted offset) and ``logits (N, K)`` (confidence
    ``sigmoid(logits)``). The priors are a buffer, so they travel with the state_dict.

    Args:
        config: the settings (architecture fields and dropout are read).
        priors: ``(K, 4)`` normalised prior boxes; zeros when omitted (to be loaded from a
            state_dict).

    The trunk is built with random weights (torch's global RNG); :meth:`load_backbone_weights`
    replaces them. The trunk's own classifier is replaced by an identity: only :meth:`trunk`
    runs.
    """

    def __init__(self, config: MultiBoxConfig, priors: np.ndarray | Tensor | None = None) -> None:
        super().__init__()
        k = config.num_priors
        self.num_priors = k
        self.backbone = GoogLeNet(backbone_config(config))
        self.backbone.fc = nn.Identity()  # type: ignore[assignment]
        self.backbone.dropout = nn.Identity()  # type: ignore[assignment]
        priors = torch.zeros(k, 4) if priors is None else torch.as_tensor(priors, dtype=torch.float32)
        if priors.shape != (k, 4):
            raise ValueError(f"priors must have shape ({k}, 4), got {tuple(priors.shape)}")
        self.register_buffer("priors", priors.clone())
        self.dropout = nn.Dropout(config.dropout)
        features = self.backbone.num_features
        self.loc = nn.Linear(features, 4 * k)
        self.conf = nn.Linear(features, k)
        self.reset_head()

    def reset_head(self) -> None:
        """Start at the priors with confidence ~1/K each.

        Tiny location weights keep the first predictions on the priors; the confidence bias
        ``logit(1/K)`` keeps the K - (few) negatives from swamping the first updates, as the
        summed cross-entropy of K confident-by-chance predictions would.
        """
        nn.init.normal_(self.loc.weight, std=0.001)
        nn.init.zeros_(self.loc.bias)
        nn.init.normal_(self.conf.weight, std=0.01)
        nn.init.constant_(self.conf.bias, -float(np.log(max(self.num_priors - 1, 1))))

    def load_backbone_weights(self, weights: str | None) -> None:
        """Initialise the trunk from ``weights`` (see :func:`classifiers.inception_weights.load_weights`).

        None keeps the random initialisation. A file's classifier layers are ignored.
        """
        if weights is None:
            return
        if weights == "imagenet":
            load_weights(self.backbone, weights)
        else:
            load_weights(self.backbone, weights, ignore_classifier=True)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(N, 3, S, S)`` -> ``(locations (N, K, 4), logits (N, K))``."""
        features = torch.flatten(self.backbone.avgpool(self.backbone.trunk(images)), 1)
        features = self.dropout(features)
        offsets = self.loc(features).view(-1, self.num_priors, 4)
        return self.priors + offsets, self.conf(features)


# ---------------------------------------------------------------------------------------------
# Loss


def _match_costs(locations: Tensor, logits: Tensor, gt: Tensor, alpha: float) -> Tensor:
    """``C[i, j] = alpha / 2 * ||l_i - g_j||^2 - logit_i``: ``(K, 4), (K,), (G, 4) -> (K, G)``.

    ``-log c_i + log(1 - c_i) = -logit_i`` exactly, so the cost needs no sigmoid and stays finite
    for any logit.
    """
    distances = ((locations[:, None, :] - gt[None, :, :]) ** 2).sum(-1)
    return alpha / 2.0 * distances - logits[:, None]


def match_predictions(locations: Tensor, logits: Tensor, gt_boxes: Tensor, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """The MultiBox assignment of one image: each ground-truth box to exactly one prediction.

    Minimises the total cost of :func:`_match_costs` with the Hungarian algorithm
    (:func:`scipy.optimize.linear_sum_assignment`, on detached CPU float64 costs).

    Args:
        locations: ``(K, 4)`` predicted boxes. logits: ``(K,)``. gt_boxes: ``(G, 4)``.
    Returns:
        ``(prediction indices (M,), gt indices (M,))`` int64, ``M = min(K, G)``, sorted by
        prediction. With more ground-truth boxes than predictions (G > K), the K boxes kept are
        those of the cheapest complete assignment of the K predictions; the others are unmatched.
    """
    if len(gt_boxes) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return empty, empty
    costs = _match_costs(locations.detach().float(), logits.detach().float(), gt_boxes.detach().float().to(locations.device), alpha)
    rows, cols = linear_sum_assignment(costs.cpu().double().numpy())
    return rows.astype(np.int64), cols.astype(np.int64)


def _matching_costs(locations: Tensor, logits: Tensor, gts: list[Tensor], largest: int, alpha: float, priors: Tensor | None) -> np.ndarray:
    """``(N, K, G_max)`` float64 assignment costs of :func:`multibox_loss` (ground truth padded to
    ``G_max``): one padded tensor and a single device-to-host copy for the whole batch."""
    n, device = len(gts), locations.device
    padded = torch.zeros(n, largest, 4, device=device)
    for i, g in enumerate(gts):
        padded[i, : len(g)] = g
    with torch.no_grad():
        if priors is None:
            distances = ((locations.detach().float()[:, :, None, :] - padded[:, None, :, :]) ** 2).sum(-1)
            costs = alpha / 2.0 * distances - logits.detach().float()[:, :, None]
        else:
            anchors = priors.detach().float().to(device)
            costs = alpha / 2.0 * ((anchors[None, :, None, :] - padded[:, None, :, :]) ** 2).sum(-1)
        return costs.double().cpu().numpy()


def multibox_loss(
    locations: Tensor, logits: Tensor, gt_boxes_list: Sequence[Tensor], alpha: float = 0.3, priors: Tensor | None = None
) -> tuple[Tensor, dict[str, Tensor]]:
    """The MultiBox training objective, averaged over the images of a batch.

    Per image, with the assignment of :func:`match_predictions` (``x_ij = 1`` for matched pairs):

    - ``F_match = sum_ij x_ij * 1/2 * ||l_i - g_j||^2``
    - ``F_conf = sum_i BCE(logit_i, matched_i)``: matched predictions are positives, all others
      negatives (summed over the K predictions, computed from logits);
    - ``F = alpha * F_match + F_conf``.

    An image without ground truth has only negatives. With more than K ground-truth boxes, only
    K are matched (see :func:`match_predictions`).

    *Prior matching* (``priors`` given; the MultiBox paper's "training with priors"): the assignment
    minimises ``alpha / 2 * ||prior_i - g_j||^2`` instead, so each ground-truth box goes to the
    prediction whose prior is nearest, whatever the network currently outputs; the loss terms
    are unchanged. Matching on predictions and confidences lets the most confident prediction
    win every match early in training, after which the others never learn (observed here on
    synthetic data); matching on priors keeps the K predictions specialised.

    Args:
        locations: ``(N, K, 4)`` normalised predicted boxes.
        logits: ``(N, K)`` confidence logits.
        gt_boxes_list: N tensors ``(G_n, 4)`` of normalised ground-truth boxes.
        alpha: weight of the location term.
        priors: ``(K, 4)`` normalised priors for prior matching; None: match on predictions.

    Returns:
        ``(loss, parts)``: the scalar ``mean_n F``, and detached scalars ``parts["match"]``
        (mean ``F_match``), ``parts["conf"]`` (mean ``F_conf``), ``parts["matched"]`` (mean
        number of matched pairs per image).
    """
    n, k = logits.shape
    if locations.shape != (n, k, 4) or len(gt_boxes_list) != n:
        raise ValueError(
            f"multibox_loss: locations {tuple(locations.shape)}, logits {tuple(logits.shape)} and "
            f"{len(gt_boxes_list)} ground-truth sets do not agree"
        )
    if n == 0:
        raise ValueError("multibox_loss: empty batch")
    device = locations.device
    gts = [torch.as_tensor(g, dtype=torch.float32).reshape(-1, 4).to(device) for g in gt_boxes_list]
    largest = max(len(g) for g in gts)
    targets = torch.zeros(n, k, device=device)
    match_terms = []
    matched = 0
    if largest:
        costs = _matching_costs(locations, logits, gts, largest, alpha, priors)
        for i, g in enumerate(gts):
            if len(g) == 0:
                continue
            rows, cols = linear_sum_assignment(costs[i, :, : len(g)])
            rows_t = torch.as_tensor(rows, dtype=torch.long, device=device)
            cols_t = torch.as_tensor(cols, dtype=torch.long, device=device)
            targets[i, rows_t] = 1.0
            match_terms.append(0.5 * ((locations[i, rows_t].float() - g[cols_t]) ** 2).sum())
            matched += len(rows)
    f_match = torch.stack(match_terms).sum() / n if match_terms else locations.float().sum() * 0.0
    f_conf = F.binary_cross_entropy_with_logits(logits.float(), targets, reduction="sum") / n
    loss = alpha * f_match + f_conf
    parts = {
        "match": f_match.detach(),
        "conf": f_conf.detach(),
        "matched": torch.tensor(matched / n),
    }
    return loss, parts


# ---------------------------------------------------------------------------------------------
# Inference


def decode_proposals(
    locations: np.ndarray, scores: np.ndarray, width: int, height: int, top_k: int, nms_iou: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Normalised predictions of one image -> ranked pixel proposals.

    Corners are put in order (a prediction with x2 < x1 still names a region), scaled by the
    image size, clipped to the image; boxes under :data:`MIN_BOX_SIDE` px on a side are dropped;
    optional class-agnostic NMS at ``nms_iou``; the ``top_k`` most confident are kept.

    Args:
        locations: ``(K, 4)`` normalised boxes. scores: ``(K,)`` confidences in [0, 1].
    Returns:
        ``boxes (B, 4)`` float32 pixels and ``scores (B,)`` float32, ``B <= top_k``, by score
        descending (ties keep prediction order).
    """
    loc = np.asarray(locations, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float32).reshape(-1)
    scale = np.array([width, height, width, height], dtype=np.float64)
    boxes = np.stack(
        [np.minimum(loc[:, 0], loc[:, 2]), np.minimum(loc[:, 1], loc[:, 3]), np.maximum(loc[:, 0], loc[:, 2]), np.maximum(loc[:, 1], loc[:, 3])],
        axis=1,
    ) * scale
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0.0, width)
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0.0, height)
    boxes = boxes.astype(np.float32)
    keep = ((boxes[:, 2] - boxes[:, 0]) >= MIN_BOX_SIDE) & ((boxes[:, 3] - boxes[:, 1]) >= MIN_BOX_SIDE) & np.isfinite(scores)
    boxes, scores = boxes[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    boxes, scores = boxes[order], scores[order]
    if nms_iou is not None and len(boxes):
        kept = nms(boxes, scores, nms_iou)
        kept = np.sort(kept)  # nms returns score order; sorting indices restores our stable order
        boxes, scores = boxes[kept], scores[kept]
    return np.ascontiguousarray(boxes[:top_k]), np.ascontiguousarray(scores[:top_k])


class MultiBoxProposer:
    """A trained MultiBox network that turns images into ranked proposals.

    Build it with :meth:`from_checkpoint`. ``top_k``, ``nms_iou`` and ``batch_size`` are plain
    attributes and may be changed after loading.
    """

    def __init__(self, model: MultiBox, config: MultiBoxConfig, device: torch.device, source: Path | None = None) -> None:
        self.device = device
        self.model = prepare_model(model, device).eval()
        self.config = config
        self.top_k = config.top_k
        self.nms_iou = config.nms_iou
        self.batch_size = config.batch_size
        self.source = source

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str = "auto",
        expected_config: MultiBoxConfig | None = None,
        top_k: int | None = None,
    ) -> MultiBoxProposer:
        """Load ``path`` (a ``kind="multibox"`` checkpoint from :func:`train_multibox`).

        Args:
            device: ``auto``, ``cpu`` or ``cuda``.
            expected_config: when given, the checkpoint's architecture (num_priors, input_size,
                backbone) must equal this config's, and this config's inference settings
                (top_k, nms_iou, batch_size) are used; otherwise the stored config's are.
            top_k: overrides the number of boxes kept per image.
        Raises:
            CheckpointError: missing or unreadable file, another kind, another architecture.
        """
        path = Path(path)
        must_match = architecture_of(expected_config) if expected_config is not None else None
        payload = load_checkpoint(path, CHECKPOINT_KIND, config_must_match=must_match)
        try:
            stored = from_dict(MultiBoxConfig, payload["config"], f"{path}: config")
        except ConfigError as error:
            raise CheckpointError(f"{path}: its MultiBox config does not load ({error})") from None
        config = stored
        if expected_config is not None:
            config = dataclasses.replace(
                stored, top_k=expected_config.top_k, nms_iou=expected_config.nms_iou, batch_size=expected_config.batch_size
            )
        if top_k is not None:
            config = dataclasses.replace(config, top_k=top_k)
        # Building draws random initial weights: keep that from moving the caller's RNG.
        with torch.random.fork_rng(devices=[]):
            model = MultiBox(config)
        try:
            model.load_state_dict(payload["model"])
        except RuntimeError as error:
            raise CheckpointError(f"{path}: weights do not fit the MultiBox network of its config ({str(error)[:300]})") from None
        logger.info(
            "loaded MultiBox from %s (K=%d, %dpx, epoch %s)", path, config.num_priors, config.input_size, payload["extra"].get("epoch")
        )
        return cls(model, config, resolve_device(device), source=path)

    @torch.inference_mode()
    def predict(self, images: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Raw network output: normalised ``locations (N, K, 4)`` and ``scores (N, K)``, float32."""
        size = self.config.input_size
        locations, scores = [], []
        for start in range(0, len(images), self.batch_size):
            batch = torch.stack([image_tensor(prepare_image(image, size)) for image in images[start : start + self.batch_size]])
            batch = batch.to(self.device, memory_format=torch.channels_last)
            with autocast(self.device):
                loc, logits = self.model(batch)
            locations.append(loc.float().cpu().numpy())
            scores.append(torch.sigmoid(logits.float()).cpu().numpy())
        k = self.config.num_priors
        return (
            np.concatenate(locations + [np.zeros((0, k, 4), np.float32)]).astype(np.float32),
            np.concatenate(scores + [np.zeros((0, k), np.float32)]).astype(np.float32),
        )

    def propose(self, images: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
        """Proposals of each image: ``[(boxes (B, 4) float32 pixels, scores (B,) float32), ...]``.

        Images are uint8 RGB ``(H, W, 3)`` of any size, warped to the network's square input;
        boxes lie inside their image, ``B <= top_k``, scores descend (see :func:`decode_proposals`).
        """
        locations, scores = self.predict(images)
        return [
            decode_proposals(locations[i], scores[i], image.shape[1], image.shape[0], self.top_k, self.nms_iou)
            for i, image in enumerate(images)
        ]

    def image_proposals(self, image_id: str, image: np.ndarray) -> ImageProposals:
        """One image's proposals as a store entry (source ``multibox``)."""
        boxes, scores = self.propose([image])[0]
        return ImageProposals(image_id, boxes, scores, np.full(len(boxes), SOURCES["multibox"], np.uint8))

    @property
    def priors(self) -> np.ndarray:
        """The network's ``(K, 4)`` normalised prior boxes."""
        return self.model.priors.detach().cpu().numpy().copy()
