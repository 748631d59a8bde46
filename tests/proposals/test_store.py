import json

import numpy as np
import pytest

from detection.data.records import Dataset, ImageRecord
from proposals.store import SOURCES, ImageProposals, ProposalStore, StoreError


def _dataset(n: int = 7, spec: str = "toy") -> Dataset:
    records = [ImageRecord(f"im{i}", None, 64, 48, [[i, i, 20 + i, 30]], [0]) for i in range(n)]
    return Dataset(spec, ["thing"], records, image_loader=lambda r: np.zeros((48, 64, 3), np.uint8))


def _compute(dataset: Dataset):
    def compute(index: int) -> ImageProposals:
        record = dataset[index]
        if index == 3:
            return ImageProposals.failed(record.image_id, "unreadable image")
        rng = np.random.default_rng(index)
        boxes = np.sort(rng.uniform(0, 40, (index + 2, 4)).astype(np.float32).reshape(-1, 2, 2), axis=1).reshape(-1, 4)
        count = len(boxes)
        return ImageProposals(record.image_id, boxes, np.linspace(1, 0, count, dtype=np.float32), np.zeros(count, np.uint8))

    return compute


def test_fill_read_and_meta(tmp_path):
    dataset = _dataset()
    store = ProposalStore(tmp_path / "s", dataset, "toy", {"k": 1}, chunk_size=3)
    assert store.fill(_compute(dataset)) == 7
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["complete"] and meta["images"] == 7 and meta["failed_images"] == 1
    assert meta["failed"] == {"im3": "unreadable image"}
    assert meta["dataset_fingerprint"] == dataset.fingerprint()
    opened = ProposalStore.open(tmp_path / "s", dataset)
    items = opened.load_all()
    assert len(items["im5"].boxes) == 7 and items["im3"].error == "unreadable image"
    assert items["im5"].boxes.dtype == np.float32


def test_interrupted_run_resumes_byte_identical(tmp_path):
    dataset = _dataset()
    full = ProposalStore(tmp_path / "full", dataset, "toy", {"k": 1}, chunk_size=3)
    full.fill(_compute(dataset))
    partial = ProposalStore(tmp_path / "part", dataset, "toy", {"k": 1}, chunk_size=3)
    def failing(index: int) -> ImageProposals:
        if index == 4:
            raise KeyboardInterrupt  # killed in the middle of the second chunk
        return _compute(dataset)(index)

    with pytest.raises(KeyboardInterrupt):
        partial.fill(failing)
    assert partial.missing_chunks() == [1, 2]
    assert not list((tmp_path / "part" / "chunks").glob("*.tmp"))
    assert partial.fill(_compute(dataset)) == 4  # only chunks 1 and 2 are computed
    for name in ("chunk-00000.npz", "chunk-00001.npz", "chunk-00002.npz"):
        assert (tmp_path / "full" / "chunks" / name).read_bytes() == (tmp_path / "part" / "chunks" / name).read_bytes()
    # A warm rerun computes nothing.
    assert partial.fill(_compute(dataset)) == 0


def test_shards_fill_disjoint_chunks(tmp_path):
    dataset = _dataset()
    for shard in range(2):
        ProposalStore(tmp_path / "s", dataset, "toy", {}, chunk_size=2).fill(_compute(dataset), shard=shard, num_shards=2)
    assert ProposalStore.open(tmp_path / "s", dataset).meta["complete"]


def test_refuses_other_dataset_or_settings(tmp_path):
    dataset = _dataset()
    ProposalStore(tmp_path / "s", dataset, "toy", {"k": 1}, chunk_size=3).fill(_compute(dataset))
    with pytest.raises(StoreError, match="different dataset"):
        ProposalStore.open(tmp_path / "s", _dataset(6))
    other = _dataset()
    other.records[0].boxes[0, 0] += 1
    with pytest.raises(StoreError, match="different dataset"):
        ProposalStore.open(tmp_path / "s", other)
    with pytest.raises(StoreError, match="other settings.*params"):
        ProposalStore(tmp_path / "s", dataset, "toy", {"k": 2}, chunk_size=3).fill(_compute(dataset))


def test_a_moved_multibox_checkpoint_with_the_same_bytes_is_the_same_store(tmp_path):
    """A run directory copied elsewhere resumes: the checkpoint's path is not part of the identity,
    its fingerprint is."""
    dataset = _dataset()
    params = {"method": "merged", "multibox_checkpoint": "/runs/a/multibox/multibox.pt", "multibox_fingerprint": "f00d", "top_k": 200}
    ProposalStore(tmp_path / "s", dataset, "merged", params, chunk_size=3).fill(_compute(dataset))
    moved = {**params, "multibox_checkpoint": "/runs/b/multibox/multibox.pt"}
    assert ProposalStore(tmp_path / "s", dataset, "merged", moved, chunk_size=3).fill(_compute(dataset)) == 0
    assert json.loads((tmp_path / "s" / "meta.json").read_text())["params"] == params  # the record stays as made
    with pytest.raises(StoreError, match="other settings.*multibox_fingerprint"):
        ProposalStore(tmp_path / "s", dataset, "merged", {**moved, "multibox_fingerprint": "beef"}, chunk_size=3).fill(_compute(dataset))


def test_incomplete_store_is_refused_for_reading(tmp_path):
    dataset = _dataset()
    ProposalStore(tmp_path / "s", dataset, "toy", {}, chunk_size=2).fill(_compute(dataset), shard=0, num_shards=2)
    with pytest.raises(StoreError, match="incomplete"):
        ProposalStore.open(tmp_path / "s", dataset)
    with pytest.raises(StoreError, match="not a proposal store"):
        ProposalStore.open(tmp_path / "nothing", dataset)


def test_sources_codes():
    assert SOURCES["selective_search"] != SOURCES["multibox"]
