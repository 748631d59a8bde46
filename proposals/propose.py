"""Computing a dataset's proposals into a store: Selective Search, MultiBox, or both merged.

One image's proposals depend only on the image and the settings, so images are spread over a
pool of worker processes (``workers``) and, across machines, over shards of the store's chunks
(``shard`` / ``num_shards``). Workers are started with the ``spawn`` method and read the dataset
again from its spec: nothing but an index crosses the process boundary, and no OpenMP or OpenCV
thread pool is inherited half-initialised through ``fork``. Each worker uses one OpenCV and one
torch thread, so ``n`` workers keep ``n`` cores busy.

An image that cannot be read is recorded in the store as failed (no boxes, the reason kept) and
counted; the run goes on.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from detection.core.atomic import file_digest
from detection.core.config_io import to_dict
from detection.core.problems import DataError
from detection.core.progress import progress_bar
from detection.data.datasets import load_dataset
from detection.data.images import report_truncated, truncated_fault
from detection.data.records import Dataset
from proposals.merge import merge_proposals
from proposals.selective_search import SelectiveSearchConfig, configure_opencv_threads, selective_search
from proposals.store import SOURCES, ImageProposals, ProposalStore, read_chunk

__all__ = ["ProposalConfig", "ProposalSummary", "run_proposals", "proposals_for_image"]

logger = logging.getLogger(__name__)

Method = Literal["ss", "multibox", "merged"]


@dataclass
class ProposalConfig:
    """How proposals are made. The paper's setting: ``merged``, SS at superpixel scale 2, top 200 MultiBox."""

    method: Method = "merged"
    selective_search: SelectiveSearchConfig = field(default_factory=lambda: SelectiveSearchConfig(superpixel_scale=2.0))
    multibox_checkpoint: str | None = None
    top_k: int = 200
    chunk_size: int = 32

    def store_params(self) -> dict[str, Any]:
        """What defines the store's contents (a store made with other values is refused)."""
        params: dict[str, Any] = {"method": self.method}
        if self.method in ("ss", "merged"):
            params["selective_search"] = to_dict(self.selective_search)
        if self.method in ("multibox", "merged"):
            if not self.multibox_checkpoint:
                raise ValueError(f"method '{self.method}' needs a MultiBox checkpoint (--multibox CKPT)")
            params["multibox_checkpoint"] = str(Path(self.multibox_checkpoint).resolve())
            params["multibox_fingerprint"] = file_digest(self.multibox_checkpoint)
            params["top_k"] = self.top_k
        return params


@dataclass
class ProposalSummary:
    images: int
    computed: int
    boxes_per_image: float
    seconds_per_image: float
    failed: int
    truncated: int = 0  # truncated files decoded in part, among the images computed in this run

    def line(self) -> str:
        return f"images: {self.images}  boxes/image: {self.boxes_per_image:.1f}  seconds/image: {self.seconds_per_image:.3f}"


class _ImageProposer:
    """Makes one image's proposals; lives once per process (the MultiBox model is loaded once)."""

    def __init__(self, dataset: Dataset, config: ProposalConfig, device: str = "cpu") -> None:
        self.dataset = dataset
        self.config = config
        self.multibox = None
        if config.method in ("multibox", "merged"):
            from proposals.multibox import MultiBoxProposer  # torch: Selective-Search-only workers never load it

            self.multibox = MultiBoxProposer.from_checkpoint(config.multibox_checkpoint, device=device, top_k=config.top_k)

    def __call__(self, index: int) -> ImageProposals:
        record = self.dataset[index]
        try:
            image = self.dataset.load_image(record)
        except DataError as error:
            logger.warning("%s: skipped (%s)", error.path, error.fault)
            return ImageProposals.failed(record.image_id, error.fault)
        proposals = proposals_for_image(record.image_id, image, self.config, self.multibox)
        fault = truncated_fault(record.path)
        return dataclasses.replace(proposals, truncated=fault) if fault else proposals


def proposals_for_image(image_id: str, image: np.ndarray, config: ProposalConfig, multibox: Any = None) -> ImageProposals:
    """Proposals of one decoded image under ``config`` (``multibox``: a loaded MultiBoxProposer)."""
    parts = []
    if config.method in ("multibox", "merged"):
        boxes, scores = multibox.propose([image])[0]
        parts.append(ImageProposals(image_id, boxes, scores, np.full(len(boxes), SOURCES["multibox"], np.uint8)))
    if config.method in ("ss", "merged"):
        boxes, scores = selective_search(image, config.selective_search)
        parts.append(ImageProposals(image_id, boxes, scores, np.full(len(boxes), SOURCES["selective_search"], np.uint8)))
    return parts[0] if len(parts) == 1 else merge_proposals(*parts)


# Worker-process state, set by the pool initialiser.
_WORKER: _ImageProposer | None = None


def _init_worker(spec: str, fingerprint: str, config: ProposalConfig) -> None:
    global _WORKER

    configure_opencv_threads(1)
    if config.method != "ss":  # a Selective-Search-only worker never imports torch (seconds saved per worker)
        import torch

        torch.set_num_threads(1)
    logging.getLogger("detection").setLevel(logging.ERROR)  # the parent already reported data warnings
    dataset = load_dataset(spec)
    if dataset.fingerprint() != fingerprint:
        raise RuntimeError(f"worker read {spec} with a different fingerprint: the data changed during the run")
    _WORKER = _ImageProposer(dataset, config)


def _worker_compute(index: int) -> ImageProposals:
    assert _WORKER is not None
    return _WORKER(index)


def run_proposals(
    dataset: Dataset,
    config: ProposalConfig,
    out_dir: str | Path,
    workers: int = 1,
    shard: int = 0,
    num_shards: int = 1,
    device: str = "cpu",
    progress: bool = True,
) -> ProposalSummary:
    """Fill the store at ``out_dir`` with the missing chunks of this shard; resume, never redo."""
    if not 0 <= shard < num_shards:
        raise ValueError(f"--shard must lie in [0, {num_shards}), got {shard}")
    store = ProposalStore(out_dir, dataset, config.method, config.store_params(), chunk_size=config.chunk_size)
    store.prepare()
    todo = sum(len(store.chunk_range(k)) for k in store.missing_chunks(shard, num_shards))
    started = time.perf_counter()
    bar = progress_bar(total=todo, desc=f"proposals ({config.method})", unit="img", disable=not progress or todo == 0)
    pool = None
    truncated: list[str] = []
    try:
        if workers > 1 and todo > 1:
            context = multiprocessing.get_context("spawn")
            pool = context.Pool(workers, initializer=_init_worker, initargs=(dataset.spec, dataset.fingerprint(), config))
            compute, map_images = _worker_compute, pool.imap
        else:
            compute, map_images = _ImageProposer(dataset, config, device), map
        computed = store.fill(
            compute, shard, num_shards, progress=bar.update,
            map_images=lambda function, indices: _noting_truncated(dataset, map_images(function, indices), truncated),
        )
    finally:
        bar.close()
        if pool is not None:
            pool.terminate()
            pool.join()
    seconds = time.perf_counter() - started
    meta = store.meta
    if meta.get("complete"):
        boxes_per_image, failed = meta["boxes_per_image"], meta["failed_images"]
        if failed:
            logger.warning("%s: %d image(s) could not be read and have no proposals (listed in meta.json)", out_dir, failed)
    else:
        # Only this shard's chunks exist; report what is there.
        counts = [len(item.boxes) for k in range(store.num_chunks) if store.chunk_path(k).is_file() for item in read_chunk(store.chunk_path(k))]
        boxes_per_image, failed = (float(np.mean(counts)) if counts else 0.0), 0
    if truncated:
        logger.warning("%s: %d truncated image(s) decoded in part, their proposals made from what they hold", out_dir, len(truncated))
    return ProposalSummary(len(dataset), computed, boxes_per_image, seconds / computed if computed else 0.0, failed, len(truncated))


def _noting_truncated(dataset: Dataset, items: Iterator[ImageProposals], truncated: list[str]) -> Iterator[ImageProposals]:
    """Pass ``items`` through, appending the ids of truncated images to ``truncated``.

    Workers do not log data warnings, so the file is named here (once per process)."""
    paths: dict[str, Path | None] | None = None
    for item in items:
        if item.truncated:
            if paths is None:
                paths = {record.image_id: record.path for record in dataset}
            truncated.append(item.image_id)
            report_truncated(paths[item.image_id] or item.image_id, item.truncated)
        yield item


def proposal_config_from_args(base: ProposalConfig, method: str | None, ss_mode: str | None, superpixel_scale: float | None, multibox: str | None, top_k: int | None) -> ProposalConfig:
    """Apply the ``rcnn propose`` flags that were given on top of a config."""
    ss = base.selective_search
    if ss_mode is not None or superpixel_scale is not None:
        ss = dataclasses.replace(ss, **{k: v for k, v in (("mode", ss_mode), ("superpixel_scale", superpixel_scale)) if v is not None})
    return dataclasses.replace(
        base,
        method=method or base.method,
        selective_search=ss,
        multibox_checkpoint=multibox if multibox is not None else base.multibox_checkpoint,
        top_k=top_k if top_k is not None else base.top_k,
    )
