"""An ensemble of region classifiers: the one way the project scores boxes on images.

:meth:`Ensemble.score` cuts the crops of every box (R-CNN warp with context padding), runs every
member on them through :class:`classifiers.scoring.CropScorer` and returns, per image, each
member's softmax probabilities; optionally each member's pooled features (what box regression
is fitted on) and box-regression deltas. The ensemble's output is the members' mean, as in the
paper. When the device runs out of memory the chunk of crops is halved and retried.

Shapes: M members, B boxes of an image, C classes; probabilities ``(M, B, C + 1)`` (output 0 is
background), deltas ``(M, B, C, 4)``, features M tensors ``(B, D_m)``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from classifiers.box_regression import BoxRegressor, load_box_regressor, regressor_path
from classifiers.inception import GoogLeNet
from classifiers.region_classifier import RegionClassifierConfig, load_member
from classifiers.scoring import CropScorer, default_batch_size
from detection.core.atomic import file_digest
from detection.core.checkpoints import CheckpointError, first_difference
from detection.core.devices import resolve_device

__all__ = ["Ensemble", "RegionScores", "parse_members", "member_paths", "crops_per_batch_for_budget"]

logger = logging.getLogger(__name__)

MEMBER_FILE = re.compile(r"member(\d+)\.pt$")


def member_paths(directory: str | Path) -> dict[int, Path]:
    """``{index: path}`` of the ``member{i}.pt`` files in a checkpoints directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: checkpoints directory not found")
    found = {int(m.group(1)): p for p in directory.iterdir() if (m := MEMBER_FILE.search(p.name))}
    if not found:
        raise CheckpointError(f"{directory}: no member*.pt checkpoints (train them with rcnn train)")
    return dict(sorted(found.items()))


def parse_members(spec: str, available: Sequence[int] | None = None) -> list[int] | None:
    """A ``--members`` value as member indices, parsed once at the edge (CLI, Python API).

    ``all`` -> every available member (None where ``available`` is None: "whatever there is");
    ``N`` -> the first N (``0 .. N-1`` without ``available``); ``i,j,k`` -> those indices, each
    of which must be available.
    """
    spec = spec.strip()
    pool = None if available is None else sorted(available)
    if spec == "all":
        return pool
    if spec.isdigit():
        count = int(spec)
        if count < 1 or (pool is not None and count > len(pool)):
            raise ValueError(f"--members {spec}: between 1 and {len(pool) if pool is not None else 'N'} members are available")
        return list(range(count)) if pool is None else pool[:count]
    try:
        chosen = [int(part) for part in spec.split(",") if part.strip()]
    except ValueError:
        chosen = []
    if not chosen or min(chosen) < 0:
        raise ValueError(f"--members {spec!r}: use all, a count N, or indices like 0,2,5")
    missing = [] if pool is None else [i for i in chosen if i not in pool]
    if missing:
        raise ValueError(f"--members {spec}: no checkpoint for member(s) {missing}; available {pool}")
    return chosen


def crops_per_batch_for_budget(crop_size: int, width: float, budget_mb: float) -> int:
    """Crops per chunk that fit ``budget_mb`` of activation memory (a rough, safe guess).

    GoogLeNet's inference peak is about 60 input-sized float32 planes per crop at width 1
    (the stem's 64-channel maps at half resolution dominate); it scales with width.
    """
    per_crop = 3 * crop_size * crop_size * 4 * 60 * max(width, 0.1)
    return int(max(8, min(4096, budget_mb * 2**20 // per_crop)))


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


@dataclass
class RegionScores:
    """What the members say about the B boxes of one image (float32, CPU).

    Attributes:
        probabilities: ``(M, B, C + 1)`` each member's softmax.
        deltas: ``(M, B, C, 4)`` each member's box-regression deltas, when asked for.
        features: M tensors ``(B, D_m)``, each member's pooled features, when asked for.
    """

    probabilities: Tensor
    deltas: Tensor | None = None
    features: list[Tensor] | None = None


def _load_regressors(directory: Path, chosen: list[int], paths: dict[int, Path], classes: list[str]) -> list[BoxRegressor]:
    """The ``box_regressor{i}.pt`` of each chosen member, each checked against its member file."""
    regressors = []
    for index in chosen:
        path = regressor_path(directory, index)
        if not path.is_file():
            raise CheckpointError(
                f"{path}: no box regressor for member {index}; fit it with `rcnn train` or `rcnn bench detection` "
                "(box_regression.enabled: true), or switch box regression off"
            )
        regressors.append(load_box_regressor(path, classes, member=index, member_digest=file_digest(paths[index])))
    return regressors


class Ensemble:
    """Members trained for one class list with one crop geometry, scored together.

    ``regressors`` (optional) holds one :class:`~classifiers.box_regression.BoxRegressor` per
    member, in the order of ``models``; scoring with ``deltas=True`` needs them.
    """

    def __init__(self, models: list[GoogLeNet], config: RegionClassifierConfig, classes: list[str], member_ids: list[int], device: torch.device, memory_budget_mb: float = 1024, regressors: list[BoxRegressor] | None = None, compile: bool = False) -> None:
        if not models:
            raise ValueError("an ensemble needs at least one member")
        if regressors is not None:
            self._check_regressors(models, classes, member_ids, regressors)
            regressors = [r.to(device) for r in regressors]
        self.regressors = regressors
        self.models = models
        self.config = config
        self.classes = classes
        self.member_ids = member_ids
        self.device = device
        self.crops_per_batch = crops_per_batch_for_budget(config.crop_size, config.width, memory_budget_mb)
        # ``compile`` compiles the members (weights frozen in) and the crop warp, see classifiers.scoring.
        self.scorer = CropScorer(models, device, default_batch_size(device, config.crop_size, config.width), compile=compile, freeze=compile)

    @staticmethod
    def _check_regressors(models: list[GoogLeNet], classes: list[str], member_ids: list[int], regressors: list[BoxRegressor]) -> None:
        if len(regressors) != len(models):
            raise ValueError(f"{len(models)} members but {len(regressors)} box regressors")
        for member, model, regressor in zip(member_ids, models, regressors):
            if (regressor.num_classes, regressor.num_features) != (len(classes), model.num_features):
                raise ValueError(
                    f"member {member}: box regressor for {regressor.num_classes} classes x {regressor.num_features} features, "
                    f"the member has {len(classes)} classes x {model.num_features} features"
                )

    @classmethod
    def from_dir(cls, directory: str | Path, classes: list[str], members: Sequence[int] | None = None, device: str = "auto", memory_budget_mb: float = 1024, box_regression: bool = False, compile: bool = False) -> Ensemble:
        """Load ``members`` (indices; None: every ``member{i}.pt`` there), which must share one
        crop geometry and class list.

        With ``box_regression`` each member's ``box_regressor{i}.pt`` is loaded too; it must have
        been fitted on that very member file (its digest), for the same class list.
        """
        directory = Path(directory)
        paths = member_paths(directory)
        chosen = list(paths) if members is None else list(members)
        missing = [i for i in chosen if i not in paths]
        if missing or not chosen:
            raise CheckpointError(f"{directory}: no checkpoint for member(s) {missing or chosen}; available {list(paths)}")
        torch_device = resolve_device(device)
        loaded = [load_member(paths[index], classes, torch_device) for index in chosen]
        configs = [config for _, config, _ in loaded]
        for index, config in zip(chosen[1:], configs[1:]):
            for key in ("crop_size", "context_padding"):
                difference = first_difference(getattr(config, key), getattr(configs[0], key), f"{key}.")
                if difference:
                    raise CheckpointError(f"{paths[index]}: crop geometry differs from member {chosen[0]} ({difference})")
        regressors = _load_regressors(directory, chosen, paths, classes) if box_regression else None
        logger.info("ensemble of %d member(s) %s on %s%s", len(chosen), chosen, torch_device, " with box regressors" if box_regression else "")
        return cls([model for model, _, _ in loaded], configs[0], classes, chosen, torch_device, memory_budget_mb, regressors, compile)

    def score(self, images: Sequence[np.ndarray], boxes_per_image: Sequence[np.ndarray], *, features: bool = False, deltas: bool = False) -> list[RegionScores]:
        """Score every box of every image: one :class:`RegionScores` per image, box order kept.

        Crops are cut and scored ``crops_per_batch`` at a time (all crops of a few images at 224 px
        would not fit in memory); on out-of-memory the chunk is halved and retried.
        """
        if deltas and self.regressors is None:
            raise ValueError("this ensemble has no box regressors (load it with box_regression=True)")
        counts = [len(b) for b in boxes_per_image]
        owner = np.repeat(np.arange(len(counts)), counts)
        flat_boxes = np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b in boxes_per_image] + [np.zeros((0, 4), np.float32)])
        chunks: list[RegionScores] = []
        start = 0
        while start < len(flat_boxes):
            stop = min(len(flat_boxes), start + self.crops_per_batch)
            used = np.unique(owner[start:stop])
            chunk_images = [images[i] for i in used]
            chunk_boxes = [flat_boxes[start:stop][owner[start:stop] == i] for i in used]
            try:
                chunks.append(self._score_chunk(chunk_images, chunk_boxes, features or deltas, deltas))
            except (RuntimeError, torch.OutOfMemoryError) as error:
                self._shrink_after(error, stop - start)
                continue
            start = stop
        return self._split(chunks, counts, features, deltas)

    def score_crops(self, crops: Tensor) -> Tensor:
        """Per-member softmax ``(M, N, C + 1)`` (float32, CPU) of crops ``(N, 3, S, S)`` already
        cut and normalised (the classification track's multi-crop views, which are no boxes)."""
        return self.scorer.score(crops, per_member=True).cpu()

    def _score_chunk(self, images: list[np.ndarray], boxes: list[np.ndarray], with_features: bool, with_deltas: bool) -> RegionScores:
        """One chunk of crops through the scorer: probabilities and, when asked, features and deltas."""
        geometry = {"size": self.config.crop_size, "padding": self.config.padding()}
        if not with_features:
            return RegionScores(self.scorer.score_boxes(images, boxes, **geometry, per_member=True).cpu())
        probabilities, pooled = self.scorer.score_boxes(images, boxes, **geometry, with_features=True)
        deltas = None
        if with_deltas:
            assert self.regressors is not None
            deltas = torch.stack([r.predict(f) for r, f in zip(self.regressors, pooled)]).cpu()
        return RegionScores(probabilities.cpu(), deltas, [f.cpu() for f in pooled])

    def _shrink_after(self, error: BaseException, crops: int) -> None:
        """Halve ``crops_per_batch`` after an out-of-memory error; any other error goes on up."""
        if not _is_out_of_memory(error) or self.crops_per_batch <= 1:
            raise error
        self.crops_per_batch = max(1, self.crops_per_batch // 2)
        logger.warning("out of memory at %d crops per pass; retrying with %d", crops, self.crops_per_batch)
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _split(self, chunks: list[RegionScores], counts: list[int], features: bool, deltas: bool) -> list[RegionScores]:
        """Chunks of crops (image-major) -> one :class:`RegionScores` per image (every chunk holds
        features and deltas when they were asked for)."""
        num_members, num_classes = len(self.models), len(self.classes)
        probabilities = torch.cat([c.probabilities for c in chunks] + [torch.zeros((num_members, 0, num_classes + 1))], dim=1)
        per_image = [RegionScores(p) for p in torch.split(probabilities, counts, dim=1)]
        if deltas:
            stacked = torch.cat([c.deltas for c in chunks] + [torch.zeros((num_members, 0, num_classes, 4))], dim=1)  # type: ignore[misc]
            for scores, part in zip(per_image, torch.split(stacked, counts, dim=1)):
                scores.deltas = part
        if features:
            # member m's features of every crop, split by image: per_member[m][i] is (B_i, D_m)
            per_member = [
                torch.split(torch.cat([c.features[m] for c in chunks] + [torch.zeros((0, model.num_features))]), counts)  # type: ignore[index]
                for m, model in enumerate(self.models)
            ]
            for i, scores in enumerate(per_image):
                scores.features = [parts[i] for parts in per_member]
        return per_image
