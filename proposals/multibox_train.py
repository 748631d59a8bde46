"""Training a MultiBox network (:mod:`proposals.multibox`) on a detection dataset.

The recipe follows the GoogLeNet paper's: SGD with momentum 0.9, the learning rate down 4% every
8 epochs (``schedule: step``; ``cosine`` is offered for short runs), and Polyak averaging (an
exponential moving average of the weights) for the model that is kept. Images are warped to the
network's square input, boxes normalised to [0, 1], and half the images mirrored left-right.

One file, ``OUT_DIR/multibox.pt``, is the whole state of a run. It is rewritten atomically at
the end of every epoch with the averaged weights (the model), and in ``extra`` the priors, the
epoch count, the live weights, the optimizer state, the number of averaged steps and the loss
history. Calling :func:`train_multibox` again on the same directory with the same settings and
more epochs continues from it; the result is bit-identical to an uninterrupted run on the CPU,
because all randomness of epoch ``e`` (order, flips, dropout) is drawn from generators seeded
by ``(seed, e)`` and the learning rate is a function of ``e``.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import DataLoader, Sampler

from detection.core.checkpoints import CheckpointError, first_difference, load_checkpoint, save_checkpoint
from detection.core.config_io import to_dict
from detection.core.devices import autocast, prepare_model, resolve_device
from detection.core.problems import DataError, WarningTally
from detection.core.progress import progress_bar
from detection.data.images import TRUNCATED_IMAGE, truncated_fault
from detection.data.records import Dataset
from proposals.multibox import (
    CHECKPOINT_KIND,
    CHECKPOINT_NAME,
    MultiBox,
    MultiBoxConfig,
    dataset_priors,
    image_tensor,
    multibox_loss,
    prepare_image,
)

__all__ = ["train_multibox", "learning_rate", "epoch_batches", "RESUME_IGNORES"]

logger = logging.getLogger(__name__)

#: Config entries that may change between an interrupted run and its continuation: they do not
#: affect the weights of the epochs already trained (inference settings, the epoch target,
#: how images are fed).
RESUME_IGNORES = ("epochs", "top_k", "nms_iou", "num_workers", "cache_images")


def learning_rate(config: MultiBoxConfig, epoch: int) -> float:
    """Learning rate of (0-based) ``epoch``: step decay or cosine, see :class:`MultiBoxConfig`."""
    if config.schedule == "cosine":
        return 0.5 * config.lr * (1.0 + math.cos(math.pi * epoch / max(config.epochs, 1)))
    return config.lr * config.lr_decay ** (epoch // config.decay_epochs)


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed for the randomness of one epoch, a function of ``(seed, epoch)`` only."""
    return int(np.random.SeedSequence([seed, epoch]).generate_state(2, dtype=np.uint64)[0] >> np.uint64(1))


def epoch_batches(num_images: int, batch_size: int, seed: int, epoch: int, hflip: bool) -> list[list[tuple[int, bool]]]:
    """The batches of one epoch: lists of ``(image index, mirror?)``, shuffled by ``(seed, epoch)``.

    A last batch of a single image is folded into the one before it: batch norm cannot
    normalise one sample whose final feature map is 1x1.
    """
    rng = np.random.default_rng([seed, epoch, 1])
    order = rng.permutation(num_images)
    flips = rng.random(num_images) < 0.5 if hflip else np.zeros(num_images, dtype=bool)
    items = [(int(i), bool(f)) for i, f in zip(order, flips)]
    batches = [items[start : start + batch_size] for start in range(0, num_images, batch_size)]
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2].extend(batches.pop())
    return batches


class _EpochSampler(Sampler[list[tuple[int, bool]]]):
    """Batch sampler whose batches are set per epoch in the main process (works with persistent workers)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, bool]]] = []

    def __iter__(self) -> Iterator[list[tuple[int, bool]]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class _TrainingImages(torch.utils.data.Dataset):
    """Item ``(index, mirror)`` -> ``(image (3, S, S) float32, boxes (G, 4) float32 normalised, index,
    truncated)``, ``truncated`` True for a truncated file decoded in part (a worker tells the parent).

    An image that cannot be read gives ``(None, None, index, False)``; the collate function drops it.
    Boxes of zero width or height are dropped (they cannot be matched meaningfully).
    """

    def __init__(self, dataset: Dataset, size: int, cache: bool) -> None:
        self.dataset = dataset
        self.size = size
        self.cache: dict[int, tuple[np.ndarray, np.ndarray, bool] | None] | None = {} if cache else None

    def __len__(self) -> int:
        return len(self.dataset)

    def _load(self, index: int) -> tuple[np.ndarray, np.ndarray, bool] | None:
        """Warped uint8 ``(S, S, 3)`` image, normalised ``(G, 4)`` boxes and whether the file was
        truncated, or None if unreadable."""
        if self.cache is not None and index in self.cache:
            return self.cache[index]
        record = self.dataset[index]
        try:
            image = self.dataset.load_image(record)
        except DataError:
            loaded = None
        else:
            height, width = image.shape[:2]
            boxes = np.clip(record.boxes / np.array([width, height, width, height], dtype=np.float32), 0.0, 1.0)
            boxes = boxes[(boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])]
            loaded = (prepare_image(image, self.size), boxes.astype(np.float32), truncated_fault(record.path) is not None)
        if self.cache is not None:
            self.cache[index] = loaded
        return loaded

    def __getitem__(self, item: tuple[int, bool]) -> tuple[Tensor | None, Tensor | None, int, bool]:
        index, mirror = item
        loaded = self._load(index)
        if loaded is None:
            return None, None, index, False
        warped, boxes, truncated = loaded
        if mirror:
            warped = warped[:, ::-1]
            boxes = np.stack([1.0 - boxes[:, 2], boxes[:, 1], 1.0 - boxes[:, 0], boxes[:, 3]], axis=1).astype(np.float32)
        return image_tensor(warped), torch.from_numpy(np.ascontiguousarray(boxes).reshape(-1, 4)), index, truncated


def _collate(items: list[tuple[Tensor | None, Tensor | None, int, bool]]) -> tuple[Tensor | None, list[Tensor], list[int], list[int]]:
    """Stack the readable images: ``(images (B, 3, S, S) or None, [boxes (G, 4)] * B, unreadable
    indices, indices of truncated files decoded in part)``."""
    good = [(image, boxes) for image, boxes, _, _ in items if image is not None]
    failed = [index for image, _, index, _ in items if image is None]
    truncated = [index for _, _, index, cut in items if cut]
    if not good:
        return None, [], failed, truncated
    return torch.stack([image for image, _ in good]), [boxes for _, boxes in good], failed, truncated  # type: ignore[misc]


def _polyak_update(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor], None]:
    """A ``multi_avg_fn`` for AveragedModel: EMA with warm-up; integer buffers are copied.

    AveragedModel calls it once per (device, dtype) group of tensors, so the step count is read
    from the device once per group, not once per tensor.
    """

    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor) -> None:
        n = int(num_averaged)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        for avg, cur in zip(averaged, current):
            if avg.is_floating_point():
                avg.lerp_(cur, weight)
            else:
                avg.copy_(cur)  # num_batches_tracked: a counter, not something to average

    return update


def _resume_view(config_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config_dict.items() if k not in RESUME_IGNORES}


def _check_resumable(path: Path, payload: dict[str, Any], config: MultiBoxConfig, fingerprint: str) -> int:
    """Epochs already done in ``payload``; CheckpointError when it cannot be continued with ``config``."""
    stored = payload["config"]
    difference = first_difference(_resume_view(stored), _resume_view(to_dict(config)))
    start_over = "delete it (or choose another output directory) to start over"
    if difference:
        raise CheckpointError(f"{path}: made with another MultiBox configuration ({difference}); {start_over}")
    extra = payload["extra"]
    if extra.get("dataset_fingerprint") != fingerprint:
        raise CheckpointError(
            f"{path}: trained on other data (dataset fingerprint {extra.get('dataset_fingerprint')} vs {fingerprint}); {start_over}"
        )
    done = int(extra.get("epoch", 0))
    if done > config.epochs:
        raise CheckpointError(f"{path}: already trained for {done} epochs, more than the {config.epochs} asked for; {start_over}")
    if config.schedule == "cosine" and done < config.epochs and stored.get("epochs") != config.epochs:
        raise CheckpointError(
            f"{path}: the cosine schedule depends on the number of epochs ({stored.get('epochs')} there, "
            f"{config.epochs} now), so it cannot be continued; {start_over}"
        )
    return done


def _load_training_state(
    payload: dict[str, Any], model: MultiBox, averaged: AveragedModel, optimizer: torch.optim.Optimizer
) -> list[dict[str, float]]:
    extra = payload["extra"]
    model.load_state_dict(extra["live_model"])
    averaged.module.load_state_dict(payload["model"])
    averaged.n_averaged.fill_(int(extra["n_averaged"]))
    optimizer.load_state_dict(extra["optimizer"])
    return list(extra.get("history", []))


def _save(
    path: Path,
    config: MultiBoxConfig,
    dataset: Dataset,
    priors: np.ndarray,
    epoch: int,
    model: MultiBox,
    averaged: AveragedModel,
    optimizer: torch.optim.Optimizer,
    history: list[dict[str, float]],
    fingerprint: str,
) -> None:
    def cpu(state: dict[str, Tensor]) -> dict[str, Tensor]:
        return {k: v.detach().cpu().clone() for k, v in state.items()}

    extra = {
        "priors": torch.from_numpy(priors.copy()),
        "epoch": epoch,
        "n_averaged": int(averaged.n_averaged),
        "live_model": cpu(model.state_dict()),
        "optimizer": optimizer.state_dict(),
        "history": history,
        # Each epoch reseeds from (seed, epoch): this state is kept for inspection only.
        "rng": {"scheme": "torch.manual_seed(SeedSequence([seed, epoch])) per epoch", "torch_cpu": torch.get_rng_state()},
        "dataset_spec": dataset.spec,
        "dataset_fingerprint": fingerprint,
    }
    save_checkpoint(path, CHECKPOINT_KIND, to_dict(config), list(dataset.classes), cpu(averaged.module.state_dict()), extra)


def train_multibox(config: MultiBoxConfig, dataset: Dataset, out_dir: Path, device: str = "auto", progress: bool = True) -> Path:
    """Train MultiBox on ``dataset`` into ``out_dir/multibox.pt``, resuming a run left there.

    Args:
        config: the settings (architecture, loss, schedule, seed, ...).
        dataset: training images and their ground-truth boxes (labels are not used).
        out_dir: where ``multibox.pt`` is written (atomically, after every epoch).
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: show a progress bar per epoch (plain lines when stderr is not a terminal).

    Returns:
        The checkpoint path. Its ``model`` holds the averaged (Polyak) weights, the ones
        :class:`proposals.multibox.MultiBoxProposer` loads.

    Raises:
        CheckpointError: ``multibox.pt`` exists but was made with other settings (anything but
            epochs, top_k, nms_iou, num_workers and cache_images), on other data, or holds more
            epochs than asked for. Delete it to start over.

    Unreadable images are skipped with a counted warning. Same config, data and seed give the
    same weights on the CPU, whether or not the run was interrupted and resumed.
    """
    out_dir = Path(out_dir)
    path = out_dir / CHECKPOINT_NAME
    torch_device = resolve_device(device)
    if len(dataset) == 0:
        raise DataError(dataset.spec, "no images to train MultiBox on")
    fingerprint = dataset.fingerprint()

    payload = None
    start_epoch = 0
    if path.exists():
        payload = load_checkpoint(path, CHECKPOINT_KIND)
        start_epoch = _check_resumable(path, payload, config, fingerprint)
        if start_epoch == config.epochs:
            logger.info("%s: already trained for %d epochs, nothing to do", path, start_epoch)
            return path
        logger.info("%s: resuming after epoch %d of %d", path, start_epoch, config.epochs)

    if payload is not None:
        priors = payload["extra"]["priors"].numpy().astype(np.float32)
    else:
        priors = dataset_priors(dataset, config)

    # Training reseeds torch's global generator (per epoch); the caller's state is restored after.
    with torch.random.fork_rng(devices=[] if torch_device.type != "cuda" else None):
        _train(config, dataset, path, torch_device, progress, priors, payload, start_epoch, fingerprint)
    return path


def _train(
    config: MultiBoxConfig,
    dataset: Dataset,
    path: Path,
    torch_device: torch.device,
    progress: bool,
    priors: np.ndarray,
    payload: dict[str, Any] | None,
    start_epoch: int,
    fingerprint: str,
) -> None:
    """The training loop of :func:`train_multibox` (from ``start_epoch``, state in ``payload``)."""
    torch.manual_seed(config.seed)
    model = MultiBox(config, priors)
    model.load_backbone_weights(config.weights)
    model = prepare_model(model, torch_device)
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    averaged = AveragedModel(model, multi_avg_fn=_polyak_update(config.polyak_decay), use_buffers=True)
    history: list[dict[str, float]] = []
    if payload is not None:
        history = _load_training_state(payload, model, averaged, optimizer)
        del payload
    else:
        # Epoch 0 on disk: the priors and the initial weights, so a run killed in its first
        # epoch does not redo k-means.
        _save(path, config, dataset, priors, 0, model, averaged, optimizer, history, fingerprint)
    sampler = _EpochSampler()
    loader = DataLoader(
        _TrainingImages(dataset, config.input_size, config.cache_images),
        batch_sampler=sampler,
        collate_fn=_collate,
        num_workers=config.num_workers,
        persistent_workers=config.num_workers > 0,
        pin_memory=torch_device.type == "cuda",
    )
    step = _Step(model, averaged, optimizer, config, torch_device, WarningTally(f"multibox training on {dataset.spec}", logger))
    for epoch in range(start_epoch, config.epochs):
        started = time.perf_counter()
        lr = learning_rate(config, epoch)
        for group in optimizer.param_groups:
            group["lr"] = lr
        torch.manual_seed(_epoch_seed(config.seed, epoch))
        sampler.batches = epoch_batches(len(dataset), config.batch_size, config.seed, epoch, config.hflip)
        model.train()
        bar = progress_bar(loader, desc=f"multibox epoch {epoch + 1}/{config.epochs}", unit="batch", disable=not progress, leave=False)
        means, images_seen = step.epoch(bar, dataset, epoch)
        history.append({"epoch": epoch + 1, "lr": lr, "seconds": time.perf_counter() - started, "images": images_seen, **means})
        _log_epoch(history[-1], config.epochs)
        _save(path, config, dataset, priors, epoch + 1, model, averaged, optimizer, history, fingerprint)
    step.unreadable.log_summary()


@dataclass
class _Step:
    """One MultiBox optimisation step after another, with the epoch's running means."""

    model: MultiBox
    averaged: AveragedModel
    optimizer: torch.optim.Optimizer
    config: MultiBoxConfig
    device: torch.device
    unreadable: WarningTally
    seen_unreadable: set[int] = field(default_factory=set)
    seen_truncated: set[int] = field(default_factory=set)

    def epoch(self, batches: Any, dataset: Dataset, epoch: int) -> tuple[dict[str, float], int]:
        """Train on every batch; the epoch's per-image mean loss terms and the images seen."""
        matching_priors = self.model.priors if self.config.matching == "priors" else None
        sums = {"loss": 0.0, "match": 0.0, "conf": 0.0, "matched": 0.0}
        images_seen = 0
        for images, boxes, failed, truncated in batches:
            self._note_unreadable(failed, truncated, dataset)
            if images is None:
                continue
            loss, parts = self.step(images, boxes, matching_priors)
            count = len(boxes)
            images_seen += count
            sums["loss"] += float(loss.detach()) * count
            for key in ("match", "conf", "matched"):
                sums[key] += float(parts[key]) * count
            batches.set_postfix(loss=f"{float(loss.detach()):.3f}")
        batches.close()
        if images_seen == 0:
            raise DataError(dataset.spec, "no training image could be read")
        means = {key: value / images_seen for key, value in sums.items()}
        if not math.isfinite(means["loss"]):
            raise FloatingPointError(f"MultiBox training diverged in epoch {epoch + 1} (loss {means['loss']}): lower lr")
        return means, images_seen

    def step(self, images: Tensor, boxes: list[Tensor], matching_priors: Tensor | None) -> tuple[Tensor, dict[str, Tensor]]:
        images = images.to(self.device, memory_format=torch.channels_last, non_blocking=True)
        with autocast(self.device):
            locations, logits = self.model(images)
        loss, parts = multibox_loss(locations.float(), logits.float(), boxes, self.config.alpha, matching_priors)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.config.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
        self.optimizer.step()
        self.averaged.update_parameters(self.model)
        return loss, parts

    def _note_unreadable(self, failed: list[int], truncated: list[int], dataset: Dataset) -> None:
        """Warn once about each unreadable image; count each truncated one once (named in the log
        where it was decoded, perhaps a loader worker)."""
        for index in failed:
            if index not in self.seen_unreadable:
                self.seen_unreadable.add(index)
                record = dataset[index]
                self.unreadable.warn("unreadable image skipped", record.path or record.image_id)
        for index in set(truncated) - self.seen_truncated:
            self.seen_truncated.add(index)
            self.unreadable.count(TRUNCATED_IMAGE)


def _log_epoch(row: dict[str, float], epochs: int) -> None:
    logger.info(
        "multibox epoch %d/%d: loss %.4f (match %.4f, conf %.4f, %.1f matched/image), lr %.4g, %d images, %.1fs",
        row["epoch"], epochs, row["loss"], row["match"], row["conf"], row["matched"], row["lr"], row["images"], row["seconds"],
    )
