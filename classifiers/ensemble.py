"""Scoring warped crops with an ensemble of region classifiers.

The crops of a batch of images are cut once (by :class:`classifiers.scoring.CropScorer`, a
batch at a time) and scored by every member; each member's softmax probabilities are kept (studies need them per member) and
the ensemble's output is their mean, as in the paper. Members run in eval mode, channels_last,
under :func:`torch.inference_mode`, in bfloat16 autocast where the hardware does it natively.
With box regression (:mod:`classifiers.box_regression`; not in the paper) each member also
carries its regressor, and :meth:`Ensemble.score_with_deltas` gives every member's
class-specific deltas of every box, from the features of the same forward pass.

Forward passes go in chunks of ``crops_per_batch``, chosen from a memory budget; when the device
runs out of memory anyway, the chunk is halved and retried rather than the run dying.

Shapes: M members, N crops, C classes; probabilities are ``(M, N, C + 1)``, output 0 background;
deltas are ``(M, N, C, 4)`` (class ``c`` of the dataset, no background).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from classifiers.box_regression import BoxRegressor, load_box_regressor, regressor_path
from classifiers.inception import GoogLeNet
from classifiers.region_classifier import RegionClassifierConfig, load_member
from classifiers.scoring import CropScorer
from detection.core.atomic import file_digest
from detection.core.checkpoints import CheckpointError, first_difference
from detection.core.devices import resolve_device

__all__ = ["Ensemble", "parse_members", "member_paths", "crops_per_batch_for_budget"]

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


def parse_members(spec: str, available: Sequence[int]) -> list[int]:
    """``all`` -> every member; ``N`` -> the first N; ``i,j,k`` (or ``i,``) -> those indices."""
    available = sorted(available)
    spec = spec.strip()
    if spec == "all":
        return available
    if "," in spec:
        chosen = [int(part) for part in spec.split(",") if part.strip()]
        missing = [i for i in chosen if i not in available]
        if missing:
            raise ValueError(f"--members {spec}: no checkpoint for member(s) {missing}; available {available}")
        return chosen
    if spec.isdigit():
        count = int(spec)
        if not 1 <= count <= len(available):
            raise ValueError(f"--members {spec}: between 1 and {len(available)} members are available")
        return available[:count]
    raise ValueError(f"--members {spec!r}: use all, a count N, or indices like 0,2,5")


def crops_per_batch_for_budget(crop_size: int, width: float, budget_mb: float) -> int:
    """Crops per forward pass that fit ``budget_mb`` of activation memory (a rough, safe guess).

    GoogLeNet's inference peak is about 60 input-sized float32 planes per crop at width 1
    (the stem's 64-channel maps at half resolution dominate); it scales with width.
    """
    per_crop = 3 * crop_size * crop_size * 4 * 60 * max(width, 0.1)
    return int(max(8, min(4096, budget_mb * 2**20 // per_crop)))


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error).lower()
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in text or "can't allocate memory" in text


class Ensemble:
    """Members trained for one class list with one crop geometry, scored together.

    ``regressors`` (optional) holds one :class:`~classifiers.box_regression.BoxRegressor` per
    member, in the order of ``models``; :meth:`score_with_deltas` needs them.
    """

    def __init__(self, models: list[GoogLeNet], config: RegionClassifierConfig, classes: list[str], member_ids: list[int], device: torch.device, memory_budget_mb: float = 1024, regressors: list[BoxRegressor] | None = None, compile: bool = False) -> None:
        if not models:
            raise ValueError("an ensemble needs at least one member")
        if regressors is not None:
            if len(regressors) != len(models):
                raise ValueError(f"{len(models)} members but {len(regressors)} box regressors")
            for member, model, regressor in zip(member_ids, models, regressors):
                if (regressor.num_classes, regressor.num_features) != (len(classes), model.num_features):
                    raise ValueError(
                        f"member {member}: box regressor for {regressor.num_classes} classes x {regressor.num_features} features, "
                        f"the member has {len(classes)} classes x {model.num_features} features"
                    )
            regressors = [r.to(device) for r in regressors]
        self.regressors = regressors
        self.models = models
        self.config = config
        self.classes = classes
        self.member_ids = member_ids
        self.device = device
        self.crops_per_batch = crops_per_batch_for_budget(config.crop_size, config.width, memory_budget_mb)
        # One forward path for the whole project: the scorer (eval copies, channels_last,
        # bfloat16 where native, forward batches sized for the device); ``compile`` compiles the
        # members (weights frozen in) and the crop warp, see classifiers.scoring.
        self.scorer = CropScorer(models, device, compile=compile, freeze=compile)

    @classmethod
    def from_dir(cls, directory: str | Path, classes: list[str], members: str = "all", device: str = "auto", memory_budget_mb: float = 1024, box_regression: bool = False, compile: bool = False) -> Ensemble:
        """Load the chosen members; all must share one crop geometry and class list.

        With ``box_regression`` each member's ``box_regressor{i}.pt`` is loaded too; it must have
        been fitted on that very member file (its digest), for the same class list.
        """
        paths = member_paths(directory)
        chosen = parse_members(members, list(paths))
        torch_device = resolve_device(device)
        models, configs = [], []
        for index in chosen:
            model, config, _ = load_member(paths[index], classes, torch_device)
            models.append(model)
            configs.append(config)
        for index, config in zip(chosen[1:], configs[1:]):
            for key in ("crop_size", "context_padding"):
                difference = first_difference(getattr(config, key), getattr(configs[0], key), f"{key}.")
                if difference:
                    raise CheckpointError(f"{paths[index]}: crop geometry differs from member {chosen[0]} ({difference})")
        regressors = None
        if box_regression:
            regressors = []
            for index in chosen:
                path = regressor_path(directory, index)
                if not path.is_file():
                    raise CheckpointError(
                        f"{path}: no box regressor for member {index}; fit it with `rcnn train` or `rcnn bench detection` "
                        "(box_regression.enabled: true), or switch box regression off"
                    )
                regressors.append(load_box_regressor(path, classes, member=index, member_digest=file_digest(paths[index])))
        logger.info("ensemble of %d member(s) %s on %s%s", len(models), chosen, torch_device, " with box regressors" if box_regression else "")
        return cls(models, configs[0], classes, chosen, torch_device, memory_budget_mb, regressors, compile)

    def warp(self, images: Sequence[np.ndarray], boxes_per_image: Sequence[np.ndarray]) -> torch.Tensor:
        """Normalised crops ``(N, 3, S, S)`` of every box, image-major, on the device."""
        from classifiers.crops import warp_crops

        return warp_crops(list(images), list(boxes_per_image), size=self.config.crop_size, padding=self.config.padding(), device=self.device)

    def score_crops(self, crops: torch.Tensor) -> torch.Tensor:
        """Per-member softmax probabilities ``(M, N, C + 1)`` (float32, CPU) of ready crops."""
        return self.scorer.score(crops, per_member=True).cpu()

    def score_crops_with_deltas(self, crops: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member probabilities ``(M, N, C + 1)`` and box deltas ``(M, N, C, 4)`` of ready crops.

        Both float32 on the CPU; member ``m``'s deltas are its regressor applied to its pooled
        features from the same pass that gave its probabilities.
        """
        if self.regressors is None:
            raise ValueError("this ensemble has no box regressors (load it with box_regression=True)")
        probabilities, features = self.scorer.score_with_features(crops)
        return probabilities.cpu(), self._deltas(features)

    def _deltas(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Each member's regressor on its pooled features ``(N, D_m)`` -> ``(M, N, C, 4)`` float32, CPU."""
        assert self.regressors is not None
        return torch.stack([regressor.predict(f) for regressor, f in zip(self.regressors, features)]).cpu()

    def score(self, images: Sequence[np.ndarray], boxes_per_image: Sequence[np.ndarray]) -> list[torch.Tensor]:
        """Per image, per-member probabilities ``(M, B_i, C + 1)`` of its boxes.

        Crops are cut and scored ``crops_per_batch`` at a time (all crops of a few images at 224 px
        would not fit in memory); on out-of-memory the chunk is halved and retried.
        """
        return self._score(images, boxes_per_image, with_deltas=False)[0]

    def score_with_deltas(self, images: Sequence[np.ndarray], boxes_per_image: Sequence[np.ndarray]) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """As :meth:`score`, plus per image the per-member deltas ``(M, B_i, C, 4)`` of its boxes.

        The probabilities equal :meth:`score`'s; the ensemble needs its regressors.
        """
        return self._score(images, boxes_per_image, with_deltas=True)  # type: ignore[return-value]

    def _score(self, images: Sequence[np.ndarray], boxes_per_image: Sequence[np.ndarray], with_deltas: bool) -> tuple[list[torch.Tensor], list[torch.Tensor] | None]:
        """The work of :meth:`score` and :meth:`score_with_deltas` (deltas None without them)."""
        if with_deltas and self.regressors is None:
            raise ValueError("this ensemble has no box regressors (load it with box_regression=True)")
        counts = np.array([len(b) for b in boxes_per_image], dtype=np.int64)
        total = int(counts.sum())
        outputs = torch.empty((len(self.models), total, len(self.classes) + 1), dtype=torch.float32)
        deltas = torch.empty((len(self.models), total, len(self.classes), 4), dtype=torch.float32) if with_deltas else None
        owner = np.repeat(np.arange(len(counts)), counts)
        flat_boxes = np.concatenate([np.asarray(b, np.float32).reshape(-1, 4) for b in boxes_per_image] + [np.zeros((0, 4), np.float32)])
        start = 0
        while start < total:
            stop = min(total, start + self.crops_per_batch)
            used = np.unique(owner[start:stop])
            try:
                # Cut and scored a batch at a time by the scorer (its fastest path, compiled or not).
                chunk = ([images[i] for i in used], [flat_boxes[start:stop][owner[start:stop] == i] for i in used])
                geometry = {"size": self.config.crop_size, "padding": self.config.padding()}
                if deltas is not None:
                    probabilities, features = self.scorer.score_boxes_with_features(*chunk, **geometry)
                    outputs[:, start:stop], deltas[:, start:stop] = probabilities.cpu(), self._deltas(features)
                else:
                    outputs[:, start:stop] = self.scorer.score_boxes(*chunk, **geometry, per_member=True).cpu()
            except (RuntimeError, torch.OutOfMemoryError) as error:
                if not _is_out_of_memory(error) or self.crops_per_batch <= 1:
                    raise
                self.crops_per_batch = max(1, self.crops_per_batch // 2)
                logger.warning("out of memory at %d crops per pass; retrying with %d", stop - start, self.crops_per_batch)
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            start = stop
        split = counts.tolist()
        return list(torch.split(outputs, split, dim=1)), None if deltas is None else list(torch.split(deltas, split, dim=1))
