"""Fine-tuning the region classifier R-CNN style, one ensemble member at a time, resumably.

A member is a GoogLeNet with C + 1 outputs (:mod:`classifiers.region_classifier`) trained on
warped windows (:mod:`classifiers.crops`) drawn by :class:`classifiers.sampling.WindowSampler`:
batches of 128 windows, 32 foreground and 96 background, from a few images each. The recipe is
the paper's (section 6): SGD with momentum 0.9, the learning rate down 4% every 8 epochs
(``schedule: step``), Polyak averaging for the final model; plus R-CNN's mirroring and
photometric distortions (brightness, contrast, hue, saturation: albumentations, seeded).

Seeds. By default (``train.init: shared``) all members start from the same initial weights,
drawn from ``train.seed`` (the paper's members did too, "mainly because of an oversight", and
differed "only in sampling methodologies and the random order in which they see input images");
``train.init: member`` gives member ``m`` its own initial weights, drawn from
``SeedSequence([train.seed, m])``, for members that disagree more. Member ``m`` then uses
``member_seed = train.seed * 1000 + m`` for dropout, and the sampler's streams
``SeedSequence([train.seed, m, epoch])`` for the image order, the window draws, the mirror flags
and the per-batch distortion seeds.

Polyak averaging is an exponential moving average (:class:`torch.optim.swa_utils.AveragedModel`
with ``use_buffers=True``, so batch-norm statistics are averaged too) whose decay warms up as
``min(polyak, (1 + n) / (10 + n))`` after ``n`` updates: with a fixed 0.999 a short CPU run would
still be half its random initialisation after 700 steps.

Checkpoints. After every epoch the member's file is rewritten atomically with the averaged
weights as ``model`` (what :func:`classifiers.region_classifier.load_member` reads) and, in
``extra``, everything resuming needs: the live model, the optimizer, the average's update count,
the finished epoch, the torch / numpy / python RNG states and the sampler's settings. Rerunning
with the same settings resumes after the last finished epoch and ends with bit-identical weights
to an uninterrupted run (on the CPU, with the same thread count). A finished member is not
retrained; its file then drops the resume state. A file made with another classifier or train
config, member, dataset or class list is refused (``CheckpointError``); ``members``,
``num_threads`` and ``cache_images`` may change between runs, since they do not change what a
member learns.

Distributed training. Under ``torchrun --nproc_per_node N -m detection.cli train ...`` (the CLI
joins the process group, :mod:`detection.core.distributed`) the live model is wrapped in
:class:`~torch.nn.parallel.DistributedDataParallel` and passed to :func:`train_step`. Every rank
draws the same epoch from the sampler (it depends only on seed, member and epoch) and trains on
its share ``batches[rank::world_size]``; when the count does not divide evenly, the last round
wraps around to the epoch's first batches (as torch's DistributedSampler pads), so that every
rank takes the same number of synchronised steps. DDP averages the gradients and the learning
rate is unchanged, so one step sees ``world_size x batch_size`` windows: N processes train
with N times the batch of a single one and take 1/N of its steps per epoch, which is not the
same run (a single process is the reference; resuming is exact for the same N). Batch norm
keeps DDP's default ``broadcast_buffers=True``: each forward starts from rank 0's running
statistics; after each step those are also copied to the other ranks, so that the Polyak
average, updated on every rank from the unwrapped model, stays identical everywhere. Each rank
draws its own dropout masks, from a seed fixed by (seed, member, epoch, rank). Epoch statistics
are summed over ranks. Only rank 0 writes the member file (the others wait at a barrier after
each save), and on a rerun every rank loads the same checkpoint, so resuming and skipping
finished members work as in a single process.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import multiprocessing
import random
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel

from classifiers.crops import warp_crops, warp_crops_host
from classifiers.inception import GoogLeNet, GoogLeNetOutputs, googlenet_loss
from classifiers.region_classifier import MEMBER_KIND, RegionClassifierConfig, build_region_classifier
from classifiers.sampling import ImageWindows, WindowBatch, WindowSampler, build_training_windows
from detection.core import distributed
from detection.core.checkpoints import CheckpointError, first_difference, load_checkpoint, save_checkpoint
from detection.core.config_io import to_dict
from detection.core.devices import autocast, prepare_model, resolve_device, torch_threads
from detection.core.problems import DataError, WarningTally
from detection.core.progress import progress_bar
from detection.data.images import count_if_truncated
from detection.data.records import Dataset
from proposals.store import ImageProposals

__all__ = [
    "TrainConfig",
    "StepResult",
    "EpochStats",
    "member_seed",
    "init_seed",
    "member_path",
    "training_history",
    "learning_rate",
    "build_photometric",
    "train_step",
    "rank_share",
    "train_member",
    "train_members",
]

logger = logging.getLogger(__name__)

#: Train-config fields that may differ when resuming: they do not change what a member learns.
RESUME_NEUTRAL_FIELDS = ("members", "num_threads", "cache_images", "parallel")

T = TypeVar("T")


@dataclass
class TrainConfig:
    """The ``train`` section: how members are fine-tuned (defaults: the paper / R-CNN recipe).

    Attributes:
        epochs: passes over the training images (each image is visited once per epoch).
        batch_size, fg_fraction: windows per batch and their foreground share (R-CNN: 128, 0.25);
            per process under torchrun, so one step sees ``world_size x batch_size`` windows.
        fg_balance: draw each batch's foreground classes in about equal shares instead of in
            proportion to their windows (see :class:`classifiers.sampling.WindowSampler`).
        images_per_batch: images each batch draws its windows from (see classifiers.sampling).
        fg_iou, bg_iou_low, bg_iou_high: window labelling thresholds (R-CNN: 0.5, [0, 0.5)).
        optimizer: ``sgd`` (the paper: SGD with ``momentum``) or ``adamw`` (AdamW with ``lr`` and
            decoupled ``weight_decay``; ``momentum`` unused). A narrow network trained from
            scratch on a CPU budget of a few hundred steps gets much further with AdamW.
        lr, momentum, weight_decay: SGD (R-CNN fine-tuning: 0.001 from ImageNet weights, 0.9, 5e-4).
        schedule: ``step`` (the paper: lr times ``lr_decay`` every ``decay_epochs`` epochs) or
            ``cosine`` (per step, from lr down to 0 over the run).
        polyak: decay of the exponential moving average of the weights; the saved model is the
            average. 0 saves the live weights.
        hflip: mirror each window with probability 0.5.
        photometric: random brightness / contrast / hue / saturation per image and batch.
        init: ``shared`` (every member starts from the weights drawn from ``seed``, as in the
            paper) or ``member`` (each member draws its own; see the module note).
        members: ensemble size (the paper: 6).
        seed: base seed of every member (see the module note).
        num_threads: torch CPU threads while training; None leaves torch's default (under
            torchrun the CLI gives each process its share of the machine's cores).
        parallel: members trained at once on the CPU, each in its own process with
            ``num_threads // parallel`` threads (see :func:`train_members`); 1: one after another.
        cache_images: keep decoded images in memory for the whole run (a few hundred MB for
            BCCD; turn it off for ILSVRC-sized sets).
    """

    epochs: int = 16
    batch_size: int = 128
    fg_fraction: float = 0.25
    fg_balance: bool = False
    images_per_batch: int = 2
    fg_iou: float = 0.5
    bg_iou_low: float = 0.0
    bg_iou_high: float = 0.5
    optimizer: Literal["sgd", "adamw"] = "sgd"
    lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["step", "cosine"] = "step"
    lr_decay: float = 0.96
    decay_epochs: int = 8
    polyak: float = 0.999
    hflip: bool = True
    photometric: bool = True
    init: Literal["shared", "member"] = "shared"
    members: int = 6
    seed: int = 0
    num_threads: int | None = None
    parallel: int = 1
    cache_images: bool = True

    def __post_init__(self) -> None:
        for name in ("epochs", "batch_size", "images_per_batch", "decay_epochs", "members", "parallel"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.fg_fraction <= 1.0:
            raise ValueError(f"fg_fraction must lie in [0, 1], got {self.fg_fraction}")
        if not 0.0 <= self.bg_iou_low <= self.bg_iou_high <= self.fg_iou <= 1.0:
            raise ValueError(f"need 0 <= bg_iou_low <= bg_iou_high <= fg_iou <= 1, got {self.bg_iou_low}, {self.bg_iou_high}, {self.fg_iou}")
        if not 0.0 <= self.polyak < 1.0:
            raise ValueError(f"polyak must lie in [0, 1), got {self.polyak}")
        if self.lr <= 0 or self.momentum < 0 or self.weight_decay < 0 or self.lr_decay <= 0:
            raise ValueError("lr and lr_decay must be > 0, momentum and weight_decay >= 0")
        if self.num_threads is not None and self.num_threads < 1:
            raise ValueError(f"num_threads must be >= 1 or None, got {self.num_threads}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")


@dataclass
class StepResult:
    """What one update reports: the batch loss and window counts for the accuracies."""

    loss: float
    fg_correct: int
    fg_total: int
    bg_correct: int
    bg_total: int


@dataclass
class EpochStats:
    """Means over an epoch's batches (accuracies over its windows, from the training forward)."""

    epoch: int
    loss: float
    fg_accuracy: float
    bg_accuracy: float
    lr: float
    seconds: float
    batches: int
    windows: int

    def as_dict(self) -> dict[str, float | int]:
        return dataclasses.asdict(self)


def member_seed(train: TrainConfig, member: int) -> int:
    """The seed of member ``member``'s dropout: ``train.seed * 1000 + member``."""
    return train.seed * 1000 + member


def member_path(out_dir: str | Path, member: int) -> Path:
    """Where member ``member`` of a run lives: ``out_dir/member{member}.pt``."""
    return Path(out_dir) / f"member{member}.pt"


def training_history(path: str | Path) -> list[dict[str, float | int]]:
    """The per-epoch statistics (:class:`EpochStats` as dicts) stored in a member file."""
    return list(load_checkpoint(path, MEMBER_KIND)["extra"].get("history", []))


def learning_rate(train: TrainConfig, epoch: int, step: int = 0, steps_per_epoch: int = 1) -> float:
    """The learning rate at ``step`` (0-based) of epoch ``epoch`` (0-based)."""
    if train.schedule == "step":
        return train.lr * train.lr_decay ** (epoch // train.decay_epochs)
    progress = (epoch * steps_per_epoch + step) / max(1, train.epochs * steps_per_epoch)
    return 0.5 * train.lr * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------- inputs


class _ImageSource:
    """Decodes training images, optionally keeping them; unreadable ones are counted and skipped,
    truncated ones decoded in part are used and counted (once per image, however often read)."""

    def __init__(self, dataset: Dataset, cache: bool) -> None:
        self.dataset = dataset
        self.cache = cache
        self.images: dict[int, np.ndarray] = {}
        self.unreadable: set[int] = set()
        self.truncated: set[int] = set()
        self.tally = WarningTally(f"{dataset.spec} (training)", logger)

    def get(self, index: int) -> np.ndarray | None:
        """uint8 RGB ``(H, W, 3)``, or None for an image that cannot be read."""
        if index in self.images:
            return self.images[index]
        if index in self.unreadable:
            return None
        try:
            image = self.dataset.load_image(index)
        except DataError as error:
            self.unreadable.add(index)
            self.tally.warn("unreadable image skipped", error.path, error.fault)
            return None
        if index not in self.truncated and count_if_truncated(self.tally, self.dataset[index].path):
            self.truncated.add(index)
        if self.cache:
            self.images[index] = image
        return image


def build_photometric() -> Any:
    """R-CNN-style colour jitter: modest brightness/contrast and hue/saturation/value shifts."""
    import albumentations as A  # slow to import; only with train.photometric

    return A.Compose(
        [
            A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
            A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=15, val_shift_limit=10, p=0.5),
        ]
    )


def _distort(images: list[np.ndarray], transform: Any, seed: int) -> list[np.ndarray]:
    """Apply ``transform`` to each image with draws fixed by ``seed`` (one draw per image)."""
    transform.set_random_seed(seed)
    return [transform(image=image)["image"] for image in images]


def _batch_inputs(
    batch: WindowBatch,
    source: _ImageSource,
    classifier: RegionClassifierConfig,
    device: torch.device,
    photometric: Any | None,
) -> tuple[Tensor, Tensor] | None:
    """Warped, mirrored crops ``(W, 3, S, S)`` and labels ``(W,)`` of a batch on ``device``.

    Windows of unreadable images are dropped; None when fewer than two windows remain (batch
    norm cannot train on one).
    """
    counts = [len(boxes) for boxes in batch.boxes]
    owner = np.repeat(np.arange(len(counts)), counts)
    images, boxes, keep = [], [], np.zeros(len(owner), dtype=bool)
    for j, index in enumerate(batch.image_indices):
        image = source.get(index)
        if image is None:
            continue
        images.append(image)
        boxes.append(batch.boxes[j])
        keep |= owner == j
    if keep.sum() < 2:
        return None
    if photometric is not None:
        images = _distort(images, photometric, batch.aug_seed)
    flips = batch.flips[keep]
    labels = torch.from_numpy(batch.labels[keep]).to(device)
    if device.type == "cpu":
        # A few windows from each of many images: cutting only the crops beats normalising the
        # whole images onto a canvas several times over (benchmarks/bench_training.py).
        return warp_crops_host(images, boxes, size=classifier.crop_size, padding=classifier.padding(), mirror=flips), labels
    crops = warp_crops(images, boxes, size=classifier.crop_size, padding=classifier.padding(), device=device)
    mirror = torch.from_numpy(flips).to(device).view(-1, 1, 1, 1)
    return torch.where(mirror, crops.flip(-1), crops).contiguous(memory_format=torch.channels_last), labels


# ----------------------------------------------------------------------------- one update


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, crops: Tensor, labels: Tensor, aux_weight: float, device: torch.device) -> StepResult:
    """One SGD update on a batch: forward (with the auxiliary heads), loss, backward, step.

    Args:
        model: the live network in training mode (a DDP wrapper works the same).
        crops: ``(W, 3, S, S)`` normalised crops. labels: ``(W,)`` int64, 0 = background.
        aux_weight: weight of each auxiliary loss (0.3 in the paper).
    """
    model.train()
    optimizer.zero_grad(set_to_none=True)
    with autocast(device):
        outputs = model(crops)
        loss = googlenet_loss(outputs, labels, aux_weight)
    loss.backward()
    optimizer.step()
    logits = outputs.logits if isinstance(outputs, GoogLeNetOutputs) else outputs
    with torch.no_grad():
        correct = logits.argmax(dim=1) == labels
        foreground = labels != 0
        return StepResult(
            loss=float(loss.detach()),
            fg_correct=int((correct & foreground).sum()),
            fg_total=int(foreground.sum()),
            bg_correct=int((correct & ~foreground).sum()),
            bg_total=int((~foreground).sum()),
        )


# ----------------------------------------------------------------------------- state


def _ema_with_warmup(decay: float) -> Callable[[list[Tensor], list[Tensor], Tensor | int], None]:
    """An AveragedModel ``multi_avg_fn``: EMA whose decay ramps up as ``(1 + n) / (10 + n)``."""

    @torch.no_grad()
    def update(averaged: list[Tensor], current: list[Tensor], num_averaged: Tensor | int) -> None:
        n = int(num_averaged)
        d = min(decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, 1.0 - d)
        else:
            # Integer buffers (batch norm's num_batches_tracked) just follow the live model.
            for a, c in zip(averaged, current):
                a.copy_(c)

    return update


def _rng_state(device: torch.device) -> dict[str, Any]:
    """The global RNG states as plain data and tensors (``weights_only`` loads them)."""
    keys, position, has_gauss, cached = np.random.get_state()[1:]
    version, python_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)), "pos": int(position), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": int(version), "state": list(python_state), "gauss_next": gauss_next},
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"], numpy_state["has_gauss"], numpy_state["cached_gaussian"]))
    python_state = state["python"]
    random.setstate((python_state["version"], tuple(python_state["state"]), python_state["gauss_next"]))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


@dataclass
class _TrainingMember:
    """Everything that changes while a member trains."""

    model: GoogLeNet
    averaged: AveragedModel
    optimizer: torch.optim.Optimizer
    epoch: int = 0
    history: list[dict[str, float | int]] = field(default_factory=list)


def _run_config(dataset: Dataset, classifier: RegionClassifierConfig, train: TrainConfig, member: int) -> dict[str, Any]:
    """The checkpoint's ``config``: the two sections load_member and resuming read, and identity."""
    return {
        "classifier": to_dict(classifier),
        "train": to_dict(train),
        "member": {"index": member, "seed": member_seed(train, member)},
        "data": {"spec": dataset.spec, "fingerprint": dataset.fingerprint()},
    }


def _check_resumable(path: Path, payload: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse a checkpoint whose settings differ from this run's (naming the first difference)."""

    def semantic(train: dict[str, Any]) -> dict[str, Any]:
        # Fields added since a file was written take their defaults, the behaviour it was made with.
        return {k: v for k, v in (to_dict(TrainConfig()) | train).items() if k not in RESUME_NEUTRAL_FIELDS}

    stored = payload.get("config", {})
    pairs = {
        "classifier": (to_dict(RegionClassifierConfig()) | (stored.get("classifier") or {}), expected["classifier"]),
        "train": (semantic(stored.get("train") or {}), semantic(expected["train"])),
        "member": (stored.get("member"), expected["member"]),
        "data.fingerprint": ((stored.get("data") or {}).get("fingerprint"), expected["data"]["fingerprint"]),
    }
    for section, (old, new) in pairs.items():
        difference = first_difference(old, new, f"{section}.")
        if difference:
            raise CheckpointError(
                f"{path}: made with another configuration ({difference}); delete it to train this member afresh, or write elsewhere"
            )


def init_seed(train: TrainConfig, member: int) -> int:
    """The torch seed of member ``member``'s initial weights: ``train.seed`` when shared."""
    if train.init == "shared":
        return train.seed
    return int(np.random.SeedSequence([train.seed, member]).generate_state(1)[0])


def _new_member(classifier: RegionClassifierConfig, train: TrainConfig, num_classes: int, device: torch.device, member: int) -> _TrainingMember:
    """The member's initial weights (see :func:`init_seed`), its optimizer and its average."""
    torch.manual_seed(init_seed(train, member))
    model = prepare_model(build_region_classifier(classifier, num_classes), device)
    averaged = AveragedModel(model, multi_avg_fn=_ema_with_warmup(train.polyak), use_buffers=True)
    optimizer: torch.optim.Optimizer
    if train.optimizer == "adamw":
        optimizer = torch.optim.AdamW(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    return _TrainingMember(model, averaged, optimizer)


def _save(path: Path, run_config: dict[str, Any], classes: list[str], state: _TrainingMember, device: torch.device, finished: bool, info: dict[str, Any]) -> None:
    """Write the member file atomically; resume state is kept until the member is finished."""
    extra: dict[str, Any] = {"epoch": state.epoch, "finished": finished, "history": state.history, "n_averaged": int(state.averaged.n_averaged), **info}
    if not finished:
        extra.update(
            {
                "live_model": state.model.state_dict(),
                "optimizer": state.optimizer.state_dict(),
                "rng": _rng_state(device),
            }
        )
    save_checkpoint(path, MEMBER_KIND, run_config, classes, state.averaged.module.state_dict(), extra)


def _restore(path: Path, payload: dict[str, Any], state: _TrainingMember, device: torch.device) -> None:
    """Load an unfinished member's resume state into ``state`` (and the global RNGs)."""
    extra = payload["extra"]
    missing = [k for k in ("live_model", "optimizer", "rng", "epoch", "n_averaged") if k not in extra]
    if missing:
        raise CheckpointError(f"{path}: unfinished member without resume state (missing {missing}); delete it to retrain")
    state.model.load_state_dict(extra["live_model"])
    state.averaged.module.load_state_dict(payload["model"])
    state.averaged.n_averaged.fill_(int(extra["n_averaged"]))
    state.optimizer.load_state_dict(extra["optimizer"])
    state.epoch = int(extra["epoch"])
    state.history = list(extra.get("history", []))
    _set_rng_state(extra["rng"], device)


# ----------------------------------------------------------------------------- distributed pieces


def rank_share(batches: Callable[[], Iterator[T]], total: int, rank: int, world_size: int) -> Iterator[T]:
    """Rank ``rank``'s share of an epoch of ``total`` batches: positions ``rank, rank + world_size, ...``.

    Every rank gets ``ceil(total / world_size)`` batches, because DDP needs the same number of
    steps on all ranks (each backward is a collective); a rank left one short takes the batch
    at position ``(rank + own * world_size) % total`` again, i.e. the last round wraps around to
    the epoch's first batches. ``batches()`` must return the same sequence at every call (it
    is called a second time for that wrapped batch); with ``world_size == 1`` it is the epoch.
    """
    per_rank = -(-total // world_size)
    own = len(range(rank, total, world_size))
    yield from itertools.islice(batches(), rank, None, world_size)
    if own < per_rank:
        wrapped = (rank + own * world_size) % total
        yield from itertools.islice(batches(), wrapped, wrapped + 1)


def _data_parallel(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when a process group is up, else ``model`` itself.

    DDP's defaults are kept: ``broadcast_buffers=True`` (each forward starts from rank 0's
    batch-norm statistics) and no search for unused parameters (every parameter, the auxiliary
    heads included, takes part in a training forward).
    """
    if not distributed.is_initialized():
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def _rank_dropout_seed(train: TrainConfig, member: int, epoch: int, rank: int) -> int:
    """The torch seed of a rank's dropout in epoch ``epoch`` under torchrun.

    One stream per (seed, member, epoch, rank): ranks do not drop the same units for different
    windows, and resuming needs no RNG state of the other ranks (only rank 0's is saved).
    """
    return int(np.random.SeedSequence([train.seed, member, epoch, rank]).generate_state(1)[0])


# ----------------------------------------------------------------------------- epochs


def _run_epoch(
    state: _TrainingMember,
    sampler: WindowSampler,
    source: _ImageSource,
    classifier: RegionClassifierConfig,
    train: TrainConfig,
    device: torch.device,
    photometric: Any | None,
    label: str,
    progress: bool,
    network: nn.Module | None = None,
) -> EpochStats:
    """Train one epoch (``state.epoch``) and update the Polyak average after every step.

    ``network`` is what the forward and backward run through: ``state.model`` itself (None), or
    its DDP wrapper under torchrun, where this rank trains its :func:`rank_share` of the epoch
    and the statistics are summed over ranks.
    """
    network = state.model if network is None else network
    rank, world = distributed.rank(), distributed.world_size()
    started = time.perf_counter()
    losses: list[float] = []
    fg = [0, 0]
    bg = [0, 0]
    windows = 0
    steps = -(-len(sampler) // world)  # this rank's steps; len(sampler) in a single process
    lr = learning_rate(train, state.epoch, 0, steps)
    aux_weight = state.model.config.aux_weight
    share = rank_share(lambda: sampler.epoch(state.epoch), len(sampler), rank, world)
    bar = progress_bar(share, total=steps, desc=label, unit="batch", disable=not progress, leave=False)
    for step, batch in enumerate(bar):
        inputs = _batch_inputs(batch, source, classifier, device, photometric)
        # A step is a collective under DDP: if one rank has nothing to train on, all skip it.
        if not distributed.all_true(inputs is not None) or inputs is None:
            continue
        # Local step index and count are the same on every rank, so is the learning rate.
        lr = learning_rate(train, state.epoch, step, steps)
        for group in state.optimizer.param_groups:
            group["lr"] = lr
        result = train_step(network, state.optimizer, inputs[0], inputs[1], aux_weight, device)
        if world > 1:
            # Each rank's running statistics moved with its own batch; rank 0's win (as at the
            # next forward anyway), before the average reads them, so it is the same everywhere.
            distributed.broadcast_(state.model.buffers())
        state.averaged.update_parameters(state.model)
        losses.append(result.loss)
        fg[0] += result.fg_correct
        fg[1] += result.fg_total
        bg[0] += result.bg_correct
        bg[1] += result.bg_total
        windows += len(inputs[1])
        bar.set_postfix(loss=f"{result.loss:.3f}")
    bar.close()
    return _epoch_stats(state.epoch, losses, fg, bg, windows, lr, time.perf_counter() - started, label)


def _epoch_stats(epoch: int, losses: list[float], fg: list[int], bg: list[int], windows: int, lr: float, seconds: float, label: str) -> EpochStats:
    """This rank's running sums as the epoch's statistics, summed over ranks under torchrun."""
    batches = len(losses)
    loss = float(np.mean(losses)) if losses else float("nan")
    if distributed.world_size() > 1:
        # Sums over ranks; an epoch's loss is then the mean over all ranks' batches.
        totals = distributed.all_reduce_sum([sum(losses), batches, fg[0], fg[1], bg[0], bg[1], windows])
        batches, fg, bg, windows = int(totals[1]), [int(totals[2]), int(totals[3])], [int(totals[4]), int(totals[5])], int(totals[6])
        loss = totals[0] / batches if batches else float("nan")
    if not batches:
        raise RuntimeError(f"{label}: no batch could be trained (every image unreadable?)")
    return EpochStats(
        epoch=epoch + 1,
        loss=loss,
        fg_accuracy=fg[0] / fg[1] if fg[1] else float("nan"),
        bg_accuracy=bg[0] / bg[1] if bg[1] else float("nan"),
        lr=lr,
        seconds=seconds,
        batches=batches,
        windows=windows,
    )


def _log_epoch(member: int, train: TrainConfig, stats: EpochStats) -> None:
    logger.info(
        "member %d epoch %d/%d: loss %.4f  fg acc %.3f  bg acc %.3f  lr %.6g  %.1f s (%.3f s/batch, %d windows)",
        member, stats.epoch, train.epochs, stats.loss, stats.fg_accuracy, stats.bg_accuracy, stats.lr,
        stats.seconds, stats.seconds / max(1, stats.batches), stats.windows,
    )


# ----------------------------------------------------------------------------- public entry points


def _finished_or_resume(path: Path, dataset: Dataset, run_config: dict[str, Any]) -> dict[str, Any] | None:
    """The checkpoint already at ``path`` (checked against this run), or None if there is none."""
    if not path.exists():
        return None
    payload = load_checkpoint(path, MEMBER_KIND, classes=dataset.classes)
    _check_resumable(path, payload, run_config)
    return payload


def _training_device(device: str | torch.device) -> torch.device:
    """The device to train on; under torchrun a GPU is named by index (each process made its own
    GPU the current one), for DDP and for the RNG fork."""
    torch_device = resolve_device(str(device))
    if torch_device.type == "cuda" and torch_device.index is None:
        torch_device = torch.device("cuda", torch.cuda.current_device())
    return torch_device


@dataclass
class _MemberRun:
    """What the epochs of one member's training need besides its state and data."""

    path: Path
    dataset: Dataset
    classifier: RegionClassifierConfig
    train: TrainConfig
    member: int
    device: torch.device
    run_config: dict[str, Any]
    info: dict[str, Any]
    progress: bool


def _epochs(run: _MemberRun, state: _TrainingMember, sampler: WindowSampler, source: _ImageSource, photometric: Any) -> None:
    """Train the remaining epochs, saving the checkpoint after each (rank 0) behind a barrier."""
    train, world = run.train, distributed.world_size()
    # Wrapped after restoring, so DDP's initial broadcast sends the resumed weights.
    network = _data_parallel(state.model, run.device)
    while state.epoch < train.epochs:
        label = f"member {run.member} epoch {state.epoch + 1}/{train.epochs}"
        if world > 1:
            torch.manual_seed(_rank_dropout_seed(train, run.member, state.epoch, distributed.rank()))
        stats = _run_epoch(state, sampler, source, run.classifier, train, run.device, photometric, label, run.progress, network=network)
        state.epoch += 1
        state.history.append(stats.as_dict())
        _log_epoch(run.member, train, stats)
        run.info["unreadable_images"] = len(source.unreadable)
        run.info["truncated_images"] = len(source.truncated)
        if distributed.is_main():
            _save(run.path, run.run_config, run.dataset.classes, state, run.device, state.epoch >= train.epochs, run.info)
        # The other ranks read this file on a rerun or at the next member: not before it is whole.
        distributed.barrier()


def train_member(
    dataset: Dataset,
    proposals: Mapping[str, ImageProposals],
    classifier: RegionClassifierConfig,
    train: TrainConfig,
    member: int,
    out_path: str | Path,
    device: str | torch.device = "auto",
    progress: bool = True,
    windows: list[ImageWindows] | None = None,
) -> Path:
    """Train (or resume, or skip when finished) ensemble member ``member`` into ``out_path``.

    Args:
        dataset: the training images and ground truth.
        proposals: image id -> stored proposals (``ProposalStore.load_all()``).
        classifier: network and crop settings (the checkpoint's ``classifier`` section).
        train: the recipe (its ``train`` section).
        member: the member's index; it selects the sampling streams and the dropout seed.
        out_path: the member's checkpoint; an unfinished one there is resumed.
        device: ``auto``, ``cpu`` or ``cuda``.
        progress: show a progress bar per epoch (on rank 0 only under torchrun).
        windows: labelled windows from :func:`build_training_windows` (computed when None; pass
            them to share the work between members).
    Returns:
        ``out_path``; ``load_member(out_path, dataset.classes)`` gives the averaged network.
    Raises:
        CheckpointError: a file at ``out_path`` made with other settings, data or classes.
    """
    path = Path(out_path)
    torch_device = _training_device(device)
    run_config = _run_config(dataset, classifier, train, member)
    payload = _finished_or_resume(path, dataset, run_config)
    if payload is not None and int(payload["extra"].get("epoch", 0)) >= train.epochs:
        logger.info("member %d already trained (%d epochs): %s", member, train.epochs, path)
        return path
    if windows is None:
        windows, _ = build_training_windows(dataset, proposals, train.fg_iou, train.bg_iou_low, train.bg_iou_high)
    sampler = WindowSampler(windows, train.batch_size, train.fg_fraction, train.images_per_batch, train.hflip, train.seed, member, train.fg_balance)
    source = _ImageSource(dataset, train.cache_images)
    photometric = build_photometric() if train.photometric else None
    info: dict[str, Any] = {"member_seed": member_seed(train, member), "sampler": sampler.state_dict(), "epochs": train.epochs}
    world = distributed.world_size()
    if world > 1:
        # Not part of the identity check: a member may resume with another process count (it
        # then continues with another effective batch, and the log says so).
        info["world_size"] = world
    progress = progress and distributed.is_main()

    fork_devices = [torch_device.index or 0] if torch_device.type == "cuda" else []
    # The caller's torch RNG is left as it was; training draws from its own seeded stream.
    with torch.random.fork_rng(devices=fork_devices), torch_threads(train.num_threads):
        state = _new_member(classifier, train, dataset.num_classes, torch_device, member)
        torch.manual_seed(member_seed(train, member))
        if payload is not None:
            _restore(path, payload, state, torch_device)
            logger.info("member %d: resuming after epoch %d of %d from %s", member, state.epoch, train.epochs, path)
            stored_world = int(payload["extra"].get("world_size", 1))
            if stored_world != world:
                logger.warning("member %d: started with %d process(es), continues with %d: the effective batch changes", member, stored_world, world)
        _epochs(_MemberRun(path, dataset, classifier, train, member, torch_device, run_config, info, progress), state, sampler, source, photometric)
    source.tally.log_summary()
    return path


def train_members(
    dataset: Dataset,
    proposals: Mapping[str, ImageProposals],
    classifier: RegionClassifierConfig,
    train: TrainConfig,
    out_dir: str | Path,
    members: list[int] | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
) -> list[Path]:
    """Train members into ``out_dir/member{i}.pt`` (default: all ``train.members``).

    Finished members are skipped and an interrupted one resumes, so rerunning the same command
    continues where it stopped. With ``train.parallel > 1`` on the CPU (and not under torchrun)
    the unfinished members train that many at a time in spawned processes, each with its share
    of the threads: a narrow network's small convolutions keep one core far busier than two, so
    two single-threaded members finish sooner than two two-threaded ones in turn. A member's
    weights depend on its thread count, not on which process trained it.
    """
    chosen = list(range(train.members)) if members is None else list(members)
    if any(m < 0 for m in chosen):
        raise ValueError(f"member indices must be >= 0, got {chosen}")
    paths = [member_path(out_dir, member) for member in chosen]
    pending = [m for m, path in zip(chosen, paths) if not _is_finished(path, train)]
    windows = build_training_windows(dataset, proposals, train.fg_iou, train.bg_iou_low, train.bg_iou_high)[0] if pending else None
    in_processes = train.parallel > 1 and len(pending) > 1 and _training_device(device).type == "cpu" and distributed.world_size() == 1
    if in_processes:
        _train_in_processes(dataset, proposals, classifier, train, out_dir, pending, windows)
    for member, path in zip(chosen, paths):
        train_member(dataset, proposals, classifier, train, member, path, device, progress, windows=windows)
    return paths


def _train_in_processes(
    dataset: Dataset,
    proposals: Mapping[str, ImageProposals],
    classifier: RegionClassifierConfig,
    train: TrainConfig,
    out_dir: str | Path,
    members: list[int],
    windows: list[ImageWindows] | None,
) -> None:
    """Train ``members`` ``train.parallel`` at a time in spawned processes (each reads the dataset
    again from its spec and gets the proposals and windows once)."""
    threads = max(1, (train.num_threads or torch.get_num_threads()) // train.parallel)
    each = dataclasses.replace(train, num_threads=threads)
    logger.info("training members %s, %d at a time, %d thread(s) each", members, train.parallel, threads)
    context = multiprocessing.get_context("spawn")
    initargs = (dataset.spec, dataset.fingerprint(), dict(proposals), windows, threads, logging.getLogger().getEffectiveLevel())
    with ProcessPoolExecutor(min(train.parallel, len(members)), mp_context=context, initializer=_init_member_worker, initargs=initargs) as pool:
        jobs = [pool.submit(_member_worker, classifier, each, member, member_path(out_dir, member)) for member in members]
        for job in jobs:
            job.result()


_WORKER_DATA: tuple[Dataset, dict[str, ImageProposals], list[ImageWindows] | None] | None = None


def _init_member_worker(spec: str, fingerprint: str, proposals: dict[str, ImageProposals], windows: list[ImageWindows] | None, threads: int, level: int) -> None:
    global _WORKER_DATA
    import cv2  # the photometric distortions run in OpenCV: its pool gets the process's share too

    from detection.data.datasets import load_dataset  # only spawned member processes read a spec

    cv2.setNumThreads(threads)

    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    logging.getLogger("detection").setLevel(max(level, logging.ERROR))  # the parent already reported data warnings
    dataset = load_dataset(spec)
    if dataset.fingerprint() != fingerprint:
        raise RuntimeError(f"member process read {spec} with a different fingerprint: the data changed during the run")
    _WORKER_DATA = (dataset, proposals, windows)


def _member_worker(classifier: RegionClassifierConfig, train: TrainConfig, member: int, path: Path) -> Path:
    assert _WORKER_DATA is not None
    dataset, proposals, windows = _WORKER_DATA
    return train_member(dataset, proposals, classifier, train, member, path, "cpu", progress=False, windows=windows)


def _is_finished(path: Path, train: TrainConfig) -> bool:
    """A cheap look at whether ``path`` holds a finished member (train_member checks it properly)."""
    if not path.is_file():
        return False
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        return int(payload["extra"].get("epoch", 0)) >= train.epochs
    except Exception:  # unreadable files are train_member's to report
        return False
