"""Detection: proposals -> warped crops -> ensemble probabilities -> per-class NMS -> detections.

Scoring every proposal with every member is the expensive part, so its result is kept on disk
per member (``scores/``: chunks of images written atomically, and in ``meta.json`` the identity
of the data, the proposal store, the member checkpoints and, with box regression, the
regressors). A rerun resumes at the first missing chunk, and any subset of the members gives its
detections without running a network again: single models and the ensemble come from one pass.
Under ``torchrun`` rank ``r`` scores the chunks ``k`` with ``k % world_size == r``; a chunk's
contents depend on ``k`` alone, so the detections equal a single process's.

Detections of an image, for each class c: proposals whose mean probability of c is above
``score_threshold``, moved by the members' mean deltas of c when box regression is on (R-CNN's
order), per-class NMS at ``nms_iou`` (R-CNN: 0.3), then the ``max_per_image`` best over all classes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from classifiers.box_regression import apply_deltas, regressor_path
from classifiers.ensemble import Ensemble, member_paths
from detection.core import distributed
from detection.core.atomic import file_digest, write_json, write_npz
from detection.core.boxes import batched_nms
from detection.core.problems import DataError, WarningTally
from detection.core.progress import progress_bar
from detection.data.images import count_if_truncated
from detection.data.records import Dataset, Detections, ImageRecord
from proposals.store import ImageProposals, ProposalStore

__all__ = ["DetectConfig", "MemberScores", "fill_score_cache", "score_dataset", "load_member_scores", "detections_from_scores"]

logger = logging.getLogger(__name__)


@dataclass
class DetectConfig:
    """How scored proposals become detections (the ``detection`` section of a run config)."""

    nms_iou: float = 0.3
    score_threshold: float = 0.01
    max_per_image: int = 100
    images_per_batch: int = 2
    memory_budget_mb: float = 1024
    chunk_images: int = 16
    # torch.compile the members (weights frozen in) and the crop warp: pays for the full-width
    # network on large jobs, not for narrow members (the README's Speed section has the figures).
    compile: bool = False


@dataclass
class MemberScores:
    """Per-member probabilities of every proposal of a dataset.

    ``boxes[i]`` ``(B_i, 4)`` and ``probabilities[i]`` ``(M, B_i, C + 1)`` (float16 on disk) for
    image ``image_ids[i]``; ``member_ids`` names the M members. Scored with box regression,
    ``deltas[i]`` ``(M, B_i, C, 4)`` (float16) are each member's deltas of each box and class,
    and ``image_sizes[i]`` the image's ``(height, width)``; both are None without it.
    """

    image_ids: list[str]
    boxes: list[np.ndarray]
    probabilities: list[np.ndarray]
    member_ids: list[int]
    deltas: list[np.ndarray] | None = None
    image_sizes: list[tuple[int, int]] | None = None


def score_dataset(
    dataset: Dataset,
    proposals_dir: str | Path,
    checkpoints_dir: str | Path,
    scores_dir: str | Path,
    members: Sequence[int] | None = None,
    device: str = "auto",
    config: DetectConfig | None = None,
    progress: bool = True,
    box_regression: bool = False,
) -> MemberScores:
    """Score every stored proposal with each member (indices; None: all), resuming from ``scores_dir``.

    Under torchrun every rank scores its share (:func:`fill_score_cache`) and then reads all
    chunks back; where only one rank needs the scores, call the two steps separately.
    """
    chosen = fill_score_cache(dataset, proposals_dir, checkpoints_dir, scores_dir, members, device, config, progress, box_regression)
    return load_member_scores(scores_dir, dataset, chosen)


def _cache_identity(dataset: Dataset, store: ProposalStore, checkpoints_dir: Path, chosen: list[int], chunk_images: int, box_regression: bool) -> dict[str, object]:
    """What a score cache was made from: data, proposals, member files (and regressors), chunking."""
    paths = member_paths(checkpoints_dir)
    identity: dict[str, object] = {
        "dataset_fingerprint": dataset.fingerprint(),
        "proposals": {"method": store.method, "params": store.params},
        "members": {str(i): file_digest(paths[i]) for i in chosen},
        "chunk_images": chunk_images,
    }
    if box_regression:
        # Only when on, so that a cache scored without regression keeps its identity.
        regressors = {i: regressor_path(checkpoints_dir, i) for i in chosen}
        absent = [str(path) for path in regressors.values() if not path.is_file()]
        if absent:
            raise FileNotFoundError(
                f"box regression is on but {', '.join(absent)} {'is' if len(absent) == 1 else 'are'} missing: fit them with "
                "`rcnn train` (box_regression.enabled: true) or `rcnn bench detection`"
            )
        identity["box_regressors"] = {str(i): file_digest(path) for i, path in regressors.items()}
    return identity


def _check_or_write_meta(scores_dir: Path, identity: dict[str, object]) -> None:
    """Refuse a cache made for other inputs; write ``meta.json`` for a new one (rank 0 only).

    Every rank compares first, so all refuse together; a rank that finds no file yet may see
    rank 0's new one a moment later, which is then equal. The barrier keeps chunk writing
    behind the meta file.
    """
    meta_path = scores_dir / "meta.json"
    if meta_path.is_file():
        stored = json.loads(meta_path.read_text())
        if stored != identity:
            raise ValueError(f"{scores_dir}: scores from other data, proposals, members or box regressors; delete it or choose another --out")
    elif distributed.is_main():
        write_json(meta_path, identity)
    distributed.barrier()


def fill_score_cache(
    dataset: Dataset,
    proposals_dir: str | Path,
    checkpoints_dir: str | Path,
    scores_dir: str | Path,
    members: Sequence[int] | None = None,
    device: str = "auto",
    config: DetectConfig | None = None,
    progress: bool = True,
    box_regression: bool = False,
) -> list[int]:
    """Score the missing chunks of ``scores_dir`` (this rank's share under torchrun).

    Chunk ``k`` holds images ``[k * chunk_images, (k + 1) * chunk_images)`` scored in batches of
    ``images_per_batch`` counted from the chunk's start, so which rank scores it does not matter
    (except that after running out of memory the ensemble keeps smaller passes, which may round
    differently). Returns the member indices once every rank is done (a barrier). With
    ``box_regression`` the chunks also hold the members' deltas and the image sizes.
    """
    config = config or DetectConfig()
    scores_dir, checkpoints_dir = Path(scores_dir), Path(checkpoints_dir)
    store = ProposalStore.open(proposals_dir, dataset)
    chosen = list(member_paths(checkpoints_dir)) if members is None else list(members)
    _check_or_write_meta(scores_dir, _cache_identity(dataset, store, checkpoints_dir, chosen, config.chunk_images, box_regression))
    num_chunks = (len(dataset) + config.chunk_images - 1) // config.chunk_images
    rank, world = distributed.rank(), distributed.world_size()
    todo = [k for k in range(num_chunks) if k % world == rank and not _chunk_path(scores_dir, k).is_file()]
    if todo:
        proposals = store.load_all()
        ensemble = Ensemble.from_dir(checkpoints_dir, dataset.classes, chosen, device, config.memory_budget_mb, box_regression, config.compile)
        tally = WarningTally(f"detect {dataset.spec}", logger)
        total = sum(len(_chunk_indices(dataset, config, k)) for k in todo)
        bar = progress_bar(total=total, desc="scoring", unit="img", disable=not progress or not distributed.is_main())
        for chunk in todo:
            arrays = _score_chunk(dataset, _chunk_indices(dataset, config, chunk), proposals, ensemble, config, box_regression, tally, bar)
            write_npz(_chunk_path(scores_dir, chunk), **arrays)
        bar.close()
        tally.log_summary()
    # Every chunk is on disk once all ranks arrive here.
    distributed.barrier()
    return chosen


def _chunk_path(scores_dir: Path, chunk: int) -> Path:
    return scores_dir / f"chunk-{chunk:05d}.npz"


def _chunk_indices(dataset: Dataset, config: DetectConfig, chunk: int) -> range:
    return range(chunk * config.chunk_images, min(len(dataset), (chunk + 1) * config.chunk_images))


def _image_and_boxes(dataset: Dataset, record: ImageRecord, item: ImageProposals, tally: WarningTally) -> tuple[np.ndarray, np.ndarray]:
    """An image and its proposals; a 1x1 stand-in and no boxes where either is missing (counted)."""
    image = None
    if item.error:
        tally.warn("image without proposals (its proposal step failed), no detections", record.image_id, item.error)
    else:
        try:
            image = dataset.load_image(record)
        except DataError as error:
            tally.warn("unreadable image, no detections", error.path, error.fault)
        else:
            count_if_truncated(tally, record.path)
    if image is None:
        return np.zeros((1, 1, 3), np.uint8), np.zeros((0, 4), np.float32)
    return image, item.boxes


def _score_chunk(
    dataset: Dataset, indices: range, proposals: dict[str, ImageProposals], ensemble: Ensemble, config: DetectConfig, box_regression: bool, tally: WarningTally, bar: Any
) -> dict[str, np.ndarray]:
    """The arrays of one chunk file: ids, box offsets, boxes, float16 probabilities (and deltas, sizes)."""
    ids, boxes, probabilities, deltas, sizes = [], [], [], [], []
    for batch_start in range(0, len(indices), config.images_per_batch):
        batch = [dataset[i] for i in indices[batch_start : batch_start + config.images_per_batch]]
        images, batch_boxes = zip(*(_image_and_boxes(dataset, record, proposals[record.image_id], tally) for record in batch))
        for record, box_array, image, scores in zip(batch, batch_boxes, images, ensemble.score(images, batch_boxes, deltas=box_regression)):
            ids.append(record.image_id)
            boxes.append(box_array)
            probabilities.append(scores.probabilities.numpy().astype(np.float16))
            if box_regression:
                deltas.append(scores.deltas.numpy().astype(np.float16))  # type: ignore[union-attr]
                sizes.append(image.shape[:2])
        bar.update(len(batch))
    members, num_classes = len(ensemble.member_ids), dataset.num_classes
    arrays = {
        "image_ids": np.array(ids, dtype=str),
        "offsets": np.concatenate([[0], np.cumsum(np.array([len(b) for b in boxes], dtype=np.int64))]),
        "boxes": np.concatenate(boxes + [np.zeros((0, 4), np.float32)]).astype(np.float32),
        "probabilities": np.concatenate(probabilities + [np.zeros((members, 0, num_classes + 1), np.float16)], axis=1),
    }
    if box_regression:
        arrays["deltas"] = np.concatenate(deltas + [np.zeros((members, 0, num_classes, 4), np.float16)], axis=1)
        arrays["image_sizes"] = np.array(sizes, dtype=np.int64).reshape(-1, 2)
    return arrays


def load_member_scores(scores_dir: str | Path, dataset: Dataset, member_ids: list[int]) -> MemberScores:
    """Read a complete scores directory back, checking it covers ``dataset`` in order.

    The deltas and image sizes are read when the cache was scored with box regression.
    """
    scores_dir = Path(scores_dir)
    meta = json.loads((scores_dir / "meta.json").read_text())
    num_chunks = (len(dataset) + meta["chunk_images"] - 1) // meta["chunk_images"]
    regressed = "box_regressors" in meta
    ids, boxes, probabilities, deltas, sizes = [], [], [], [], []
    for chunk in range(num_chunks):
        with np.load(scores_dir / f"chunk-{chunk:05d}.npz") as data:
            offsets = data["offsets"]
            for i, image_id in enumerate(data["image_ids"]):
                ids.append(str(image_id))
                boxes.append(data["boxes"][offsets[i] : offsets[i + 1]])
                probabilities.append(data["probabilities"][:, offsets[i] : offsets[i + 1]])
                if regressed:
                    deltas.append(data["deltas"][:, offsets[i] : offsets[i + 1]])
                    height, width = data["image_sizes"][i]
                    sizes.append((int(height), int(width)))
    if ids != [r.image_id for r in dataset]:
        raise ValueError(f"{scores_dir}: holds other images than {dataset.spec}")
    return MemberScores(ids, boxes, probabilities, member_ids, deltas if regressed else None, sizes if regressed else None)


def image_detections(
    image_id: str,
    boxes: np.ndarray,
    probabilities: np.ndarray,
    config: DetectConfig,
    deltas: np.ndarray | None = None,
    image_size: tuple[int, int] | None = None,
) -> Detections:
    """Detections of one image from averaged probabilities ``(B, C + 1)``.

    ``deltas`` ``(B, C, 4)`` (optional): class-specific box deltas; a detection of class c then
    takes its proposal moved by c's deltas (:func:`classifiers.box_regression.apply_deltas`,
    clipped to ``image_size`` = ``(height, width)`` when given), before the per-class NMS.
    """
    class_scores = probabilities[:, 1:]
    box_index, label = np.nonzero(class_scores > config.score_threshold)
    if len(box_index) == 0:
        return Detections.empty()
    scores = class_scores[box_index, label]
    candidates = boxes[box_index]
    if deltas is not None:
        # Only the candidates are moved: with many classes most (box, class) pairs are below the threshold.
        moved = apply_deltas(torch.from_numpy(np.asarray(candidates, np.float32)), torch.from_numpy(np.asarray(deltas[box_index, label], np.float32)), image_size)
        candidates = moved.numpy()
    keep = batched_nms(candidates, scores, label, config.nms_iou)[: config.max_per_image]
    return Detections(np.full(len(keep), image_id, dtype=object), label[keep], scores[keep], candidates[keep])


def detections_from_scores(scores: MemberScores, config: DetectConfig, members: Sequence[int] | None = None, box_regression: bool = False) -> Detections:
    """Detections of the ensemble of ``members`` (positions in ``scores.member_ids``; all if None).

    With ``box_regression`` the boxes of each class are moved by the mean deltas of the same
    members before NMS; the scores must have been computed with box regression.
    """
    chosen = list(range(len(scores.member_ids))) if members is None else list(members)
    if box_regression and (scores.deltas is None or scores.image_sizes is None):
        raise ValueError("these scores hold no box-regression deltas: score them with box_regression.enabled: true")
    parts = []
    for index, (image_id, boxes, probabilities) in enumerate(zip(scores.image_ids, scores.boxes, scores.probabilities)):
        if len(boxes):
            averaged = probabilities[chosen].astype(np.float32).mean(axis=0)
            if box_regression:
                deltas = scores.deltas[index][chosen].astype(np.float32).mean(axis=0)  # type: ignore[index]
                parts.append(image_detections(image_id, boxes, averaged, config, deltas, scores.image_sizes[index]))  # type: ignore[index]
            else:
                parts.append(image_detections(image_id, boxes, averaged, config))
    return Detections.concatenate(parts)
