"""The on-disk proposal store: boxes and scores per image, written in resumable chunks.

Layout of a store directory::

    meta.json               method, parameters, dataset spec + fingerprint, box convention,
                            chunk size, and (once complete) counts and failed images
    chunks/chunk-00000.npz  images [0, S), chunk-00001.npz images [S, 2S), ...

Each chunk holds, for its images in dataset order: ``image_ids (n,)``, ``offsets (n + 1,)``
int64 into the box arrays, ``boxes (B, 4)`` float32 in the project's convention (0-based,
continuous ``x1, y1, x2, y2``), ``scores (B,)`` float32 (higher = ranked earlier),
``sources (B,)`` uint8 (see ``SOURCES``), and ``errors (n,)`` str, empty for images that were
read, the reason for those that could not be (they have no boxes and are counted).

A chunk is written atomically once all its images are done, so an interrupted run resumes at
the first missing chunk, and chunks are written with fixed zip timestamps, so a resumed run is
byte-identical to an uninterrupted one. ``--shard i --num-shards n`` gives machine ``i`` the
chunks ``k`` with ``k % n == i``; copying the chunk files of all machines into one directory
makes the complete store.

Readers check the dataset fingerprint and the parameters, and refuse a store made for other
data or with other settings.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from detection.core.atomic import atomic_write, write_json
from detection.data.records import Dataset

__all__ = ["SOURCES", "ImageProposals", "ProposalStore", "StoreError", "rank_scores", "write_chunk", "read_chunk"]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
BOX_CONVENTION = "xyxy, 0-based continuous pixels"
SOURCES = {"selective_search": 0, "multibox": 1, "imported": 2}
# Params that say where an input was, not what it held (its fingerprint, also in the params, does):
# recorded in meta.json, left out of the identity, so a moved or copied run directory resumes.
LOCATION_PARAMS = ("multibox_checkpoint",)
_FIXED_ZIP_TIME = (1980, 1, 1, 0, 0, 0)


class StoreError(ValueError):
    """A store that cannot be used for this request; the message names the directory."""


def rank_scores(count: int) -> np.ndarray:
    """``(count,)`` float32 scores ``(count - rank) / count`` for boxes already in ranked order."""
    return ((count - np.arange(count)) / max(count, 1)).astype(np.float32)


@dataclass
class ImageProposals:
    """Proposals of one image: ``boxes (B, 4)``, ``scores (B,)``, ``sources (B,)``."""

    image_id: str
    boxes: np.ndarray
    scores: np.ndarray
    sources: np.ndarray
    error: str = ""
    # Not stored: set when the image was a truncated file decoded in part, so that a worker
    # process can tell the parent (which counts and names such files).
    truncated: str = ""

    @classmethod
    def failed(cls, image_id: str, error: str) -> ImageProposals:
        return cls(image_id, np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros(0, np.uint8), error)


def write_chunk(path: Path, items: list[ImageProposals]) -> None:
    """Write one chunk atomically as an ``.npz`` whose bytes depend only on its contents."""
    counts = np.array([len(item.boxes) for item in items], dtype=np.int64)
    arrays = {
        "image_ids": np.array([item.image_id for item in items], dtype=str),
        "offsets": np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        "boxes": np.concatenate([item.boxes for item in items] + [np.zeros((0, 4))]).astype(np.float32).reshape(-1, 4),
        "scores": np.concatenate([item.scores for item in items] + [np.zeros(0)]).astype(np.float32),
        "sources": np.concatenate([item.sources for item in items] + [np.zeros(0)]).astype(np.uint8),
        "errors": np.array([item.error for item in items], dtype=str),
    }

    def write(handle: Any) -> None:
        buffer = io.BytesIO()
        # np.savez stamps each member with the current time; fixed stamps keep reruns identical.
        with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
            for name, array in arrays.items():
                member = io.BytesIO()
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)
                archive.writestr(zipfile.ZipInfo(f"{name}.npy", date_time=_FIXED_ZIP_TIME), member.getvalue())
        handle.write(buffer.getvalue())

    atomic_write(path, write)


def read_chunk(path: Path) -> list[ImageProposals]:
    """Read one chunk back into per-image proposals."""
    try:
        with np.load(path, allow_pickle=False) as data:
            ids, offsets = data["image_ids"], data["offsets"]
            boxes, scores, sources, errors = data["boxes"], data["scores"], data["sources"], data["errors"]
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise StoreError(f"{path}: unreadable proposal chunk ({error})") from None
    return [
        ImageProposals(str(ids[i]), boxes[offsets[i] : offsets[i + 1]], scores[offsets[i] : offsets[i + 1]], sources[offsets[i] : offsets[i + 1]], str(errors[i]))
        for i in range(len(ids))
    ]


def _without_locations(value: Any) -> Any:
    """A ``params`` dict without its :data:`LOCATION_PARAMS`; any other value as it is."""
    if not isinstance(value, dict):
        return value
    return {key: item for key, item in value.items() if key not in LOCATION_PARAMS}


class ProposalStore:
    """A store directory bound to a dataset, a method name and its parameters."""

    def __init__(self, directory: str | Path, dataset: Dataset, method: str, params: dict[str, Any], chunk_size: int = 32) -> None:
        self.directory = Path(directory)
        self.dataset = dataset
        self.method = method
        self.params = params
        self.chunk_size = chunk_size
        self.num_chunks = (len(dataset) + chunk_size - 1) // chunk_size
        # Hashing every record is the costly part of an identity check: do it once per store.
        self.fingerprint = dataset.fingerprint()

    # ---------------------------------------------------------------- identity and meta

    def _identity(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "params": self.params,
            "dataset_spec": self.dataset.spec,
            "dataset_fingerprint": self.fingerprint,
            "num_images": len(self.dataset),
            "chunk_size": self.chunk_size,
            "box_convention": BOX_CONVENTION,
        }

    @property
    def meta_path(self) -> Path:
        return self.directory / "meta.json"

    def chunk_path(self, index: int) -> Path:
        return self.directory / "chunks" / f"chunk-{index:05d}.npz"

    def chunk_range(self, index: int) -> range:
        return range(index * self.chunk_size, min(len(self.dataset), (index + 1) * self.chunk_size))

    def prepare(self) -> None:
        """Create the directory, or check that an existing one was made with the same identity."""
        identity = self._identity()
        if self.meta_path.is_file():
            stored = json.loads(self.meta_path.read_text())
            self.check(stored, identity, " Write to another directory, or delete this one.")
            # Equal but for where an input lay: keep the record as made (score caches name it).
            self.params = stored["params"]
        else:
            if self.directory.is_dir() and any((self.directory / "chunks").glob("*.npz")):
                raise StoreError(f"{self.directory}: has proposal chunks but no meta.json; refusing to mix them with a new run")
            write_json(self.meta_path, identity)

    def check(self, meta: dict[str, Any], identity: dict[str, Any] | None = None, hint: str = "") -> None:
        """Raise StoreError naming the first field in which ``meta`` differs from this store."""
        identity = identity or self._identity()
        for key in ("format_version", "dataset_fingerprint", "method", "params", "chunk_size", "num_images"):
            if _without_locations(meta.get(key)) != _without_locations(identity[key]):
                what = "a different dataset" if key in ("dataset_fingerprint", "num_images") else "other settings"
                raise StoreError(
                    f"{self.directory}: made for {what} ({key}: store has {meta.get(key)!r}, "
                    f"this run has {identity[key]!r}; the store was made for {meta.get('dataset_spec')!r}).{hint}"
                )

    # ---------------------------------------------------------------- writing

    def missing_chunks(self, shard: int = 0, num_shards: int = 1) -> list[int]:
        """Chunks of this shard not yet on disk."""
        return [k for k in range(self.num_chunks) if k % num_shards == shard and not self.chunk_path(k).is_file()]

    def fill(
        self,
        compute: Callable[[int], ImageProposals],
        shard: int = 0,
        num_shards: int = 1,
        map_images: Callable[[Callable[[int], ImageProposals], list[int]], Iterator[ImageProposals]] | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> int:
        """Compute the missing chunks of a shard; returns the number of images computed.

        ``compute(i)`` returns the proposals of image ``i``. ``map_images`` maps it over a list of
        indices in order (a worker pool's ``imap``); by default a plain loop.
        """
        self.prepare()
        mapper = map_images or (lambda function, indices: map(function, indices))
        computed = 0
        for chunk in self.missing_chunks(shard, num_shards):
            indices = list(self.chunk_range(chunk))
            items = []
            for item in mapper(compute, indices):
                items.append(item)
                if progress:
                    progress(1)
            write_chunk(self.chunk_path(chunk), items)
            computed += len(indices)
        if not self.missing_chunks(0, 1):
            self._finish()
        return computed

    def _finish(self) -> None:
        counts, failed = [], {}
        for item in self.iter_images():
            counts.append(len(item.boxes))
            if item.error:
                failed[item.image_id] = item.error
        meta = self._identity()
        meta.update(
            {
                "complete": True,
                "images": len(counts),
                "boxes": int(np.sum(counts)),
                "boxes_per_image": float(np.mean(counts)) if counts else 0.0,
                "failed_images": len(failed),
                "failed": failed,
            }
        )
        write_json(self.meta_path, meta)

    # ---------------------------------------------------------------- reading

    @classmethod
    def open(cls, directory: str | Path, dataset: Dataset) -> ProposalStore:
        """Open a complete store for reading, checking that it was made for ``dataset``."""
        directory = Path(directory)
        meta_path = directory / "meta.json"
        if not meta_path.is_file():
            raise StoreError(f"{directory}: not a proposal store (no meta.json)")
        meta = json.loads(meta_path.read_text())
        store = cls(directory, dataset, meta["method"], meta["params"], meta["chunk_size"])
        store.check(meta)
        missing = store.missing_chunks()
        if missing:
            raise StoreError(f"{directory}: incomplete, {len(missing)} of {store.num_chunks} chunks missing (first: {store.chunk_path(missing[0]).name}); rerun rcnn propose to finish it")
        return store

    @property
    def meta(self) -> dict[str, Any]:
        return json.loads(self.meta_path.read_text())

    def iter_images(self) -> Iterator[ImageProposals]:
        """Every image's proposals in dataset order."""
        for chunk in range(self.num_chunks):
            items = read_chunk(self.chunk_path(chunk))
            expected = [self.dataset[i].image_id for i in self.chunk_range(chunk)]
            if [item.image_id for item in items] != expected:
                raise StoreError(f"{self.chunk_path(chunk)}: holds other images than the dataset has at these positions")
            yield from items

    def load_all(self) -> dict[str, ImageProposals]:
        """All proposals keyed by image id (a dataset's worth fits in memory: ~30 KB per image)."""
        return {item.image_id: item for item in self.iter_images()}

    def load_boxes(self) -> dict[str, np.ndarray]:
        """Every image's ranked proposal boxes ``(B, 4)`` keyed by image id (what recall, the
        error analysis and pictures read)."""
        return {item.image_id: item.boxes for item in self.iter_images()}
