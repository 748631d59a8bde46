"""Member training: a tiny run learns, loads through load_member, resumes bit-identically, is not redone."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch

import classifiers.train as train_module
from classifiers.region_classifier import RegionClassifierConfig, load_member
from classifiers.train import TrainConfig, init_seed, learning_rate, member_path, train_member, train_members
from detection.config import ConfigError, from_dict, load_config
from detection.core.checkpoints import CheckpointError
from detection.core.problems import DataError
from detection.data.records import Dataset
from detection.data.synthetic import synthetic_dataset
from proposals.store import ImageProposals
from tests.conftest import REPO

CLASSIFIER = RegionClassifierConfig(crop_size=48, width=0.125, batch_norm=True)
TRAIN = TrainConfig(epochs=4, batch_size=32, images_per_batch=2, lr=0.02, polyak=0.9, num_threads=1, members=2)


def jittered_proposals(dataset: Dataset, seed: int = 0, per_image: int = 24) -> dict[str, ImageProposals]:
    """Stand-in proposals, fast to make: ground truth jittered by ~25% of its size, plus random boxes."""
    rng = np.random.default_rng(seed)
    result = {}
    for record in dataset:
        limits = np.array([record.width, record.height] * 2, np.float32)
        near = record.boxes[rng.integers(0, max(1, record.num_boxes), per_image)] if record.num_boxes else np.zeros((0, 4), np.float32)
        sizes = np.tile(near[:, 2:] - near[:, :2], 2)
        near = near + rng.normal(0.0, 0.25, near.shape) * sizes
        corners = rng.uniform(0.0, 1.0, (per_image, 4)) * limits
        random_boxes = np.concatenate([np.minimum(corners[:, :2], corners[:, 2:]), np.maximum(corners[:, :2], corners[:, 2:])], axis=1)
        boxes = np.clip(np.concatenate([near, random_boxes]), 0.0, limits).astype(np.float32)
        result[record.image_id] = ImageProposals(record.image_id, boxes, np.zeros(len(boxes), np.float32), np.zeros(len(boxes), np.uint8))
    return result


@pytest.fixture(scope="module")
def data() -> tuple[Dataset, dict[str, ImageProposals]]:
    dataset = synthetic_dataset(6, 0)
    return dataset, jittered_proposals(dataset)


@pytest.fixture(scope="module")
def finished(data: tuple[Dataset, dict[str, ImageProposals]], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One member trained without interruption (shared by several tests, which must not modify it)."""
    dataset, proposals = data
    path = tmp_path_factory.mktemp("uninterrupted") / "member0.pt"
    return train_member(dataset, proposals, CLASSIFIER, TRAIN, 0, path, device="cpu", progress=False)


def test_a_tiny_member_trains_and_loads_for_scoring(data: tuple[Dataset, dict[str, ImageProposals]], finished: Path) -> None:
    dataset, _ = data
    model, config, payload = load_member(finished, dataset.classes)
    assert config == CLASSIFIER
    assert not model.training
    with torch.no_grad():
        scores = model(torch.randn(5, 3, 48, 48))
    assert scores.shape == (5, dataset.num_classes + 1)
    extra = payload["extra"]
    assert extra["epoch"] == TRAIN.epochs and extra["finished"]
    assert "live_model" not in extra and "optimizer" not in extra  # resume state dropped when done
    assert payload["config"]["train"] == dataclasses.asdict(TRAIN)
    losses = [epoch["loss"] for epoch in extra["history"]]
    assert all(np.isfinite(losses)) and len(losses) == TRAIN.epochs
    # Honest bound: on 6 images and 3 batches an epoch the loss is noisy, but with this seed it
    # falls from the first epoch to the last (the classifier at least learns the class prior).
    assert losses[-1] < losses[0]
    # The saved weights are the Polyak average, not the live weights of the last step.
    assert extra["n_averaged"] == TRAIN.epochs * 3


def test_resuming_after_an_interruption_gives_bit_identical_weights(
    data: tuple[Dataset, dict[str, ImageProposals]], finished: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dataset, proposals = data
    path = tmp_path / "member0.pt"
    real_run_epoch = train_module._run_epoch

    def interrupted(state, *args, **kwargs):  # type: ignore[no-untyped-def]
        if state.epoch == 2:
            raise KeyboardInterrupt
        return real_run_epoch(state, *args, **kwargs)

    monkeypatch.setattr(train_module, "_run_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train_member(dataset, proposals, CLASSIFIER, TRAIN, 0, path, device="cpu", progress=False)
    partial = torch.load(path, weights_only=True)
    assert partial["extra"]["epoch"] == 2 and not partial["extra"]["finished"]
    # A partly trained member is already usable for scoring.
    load_member(path, dataset.classes)

    epochs_run: list[int] = []

    def counted(state, *args, **kwargs):  # type: ignore[no-untyped-def]
        epochs_run.append(state.epoch)
        return real_run_epoch(state, *args, **kwargs)

    monkeypatch.setattr(train_module, "_run_epoch", counted)
    # Disturb the global RNGs: the resumed run must restore its own.
    torch.manual_seed(12345)
    np.random.seed(6789)
    train_member(dataset, proposals, CLASSIFIER, TRAIN, 0, path, device="cpu", progress=False)
    assert epochs_run == [2, 3]  # resumed, not retrained from scratch
    resumed = torch.load(path, weights_only=True)
    reference = torch.load(finished, weights_only=True)
    assert resumed["model"].keys() == reference["model"].keys()
    for key, value in reference["model"].items():
        assert torch.equal(resumed["model"][key], value), key
    strip = lambda history: [{k: v for k, v in epoch.items() if k != "seconds"} for epoch in history]  # noqa: E731
    assert strip(resumed["extra"]["history"]) == strip(reference["extra"]["history"])


def test_a_finished_member_is_not_retrained(data: tuple[Dataset, dict[str, ImageProposals]], finished: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dataset, proposals = data
    before = finished.stat().st_mtime_ns

    def fail(*args, **kwargs):  # type: ignore[no-untyped-def]
        raise AssertionError("a finished member was trained again")

    monkeypatch.setattr(train_module, "_run_epoch", fail)
    monkeypatch.setattr(train_module, "build_training_windows", fail)
    # Thread count and image caching do not change what is learnt: still the same member.
    relaxed = dataclasses.replace(TRAIN, num_threads=2, cache_images=False, members=6)
    assert train_member(dataset, proposals, CLASSIFIER, relaxed, 0, finished, device="cpu", progress=False) == finished
    assert finished.stat().st_mtime_ns == before


def test_a_checkpoint_made_otherwise_is_refused(data: tuple[Dataset, dict[str, ImageProposals]], finished: Path) -> None:
    dataset, proposals = data
    with pytest.raises(CheckpointError, match=r"train\.lr: 0\.02 vs 0\.01.*delete it"):
        train_member(dataset, proposals, CLASSIFIER, dataclasses.replace(TRAIN, lr=0.01), 0, finished, device="cpu", progress=False)
    with pytest.raises(CheckpointError, match=r"classifier\.width"):
        train_member(dataset, proposals, dataclasses.replace(CLASSIFIER, width=0.25), TRAIN, 0, finished, device="cpu", progress=False)
    with pytest.raises(CheckpointError, match=r"member\.index"):
        train_member(dataset, proposals, CLASSIFIER, TRAIN, 1, finished, device="cpu", progress=False)
    renamed = dataclasses.replace(dataset, classes=[f"{name}_" for name in dataset.classes])
    with pytest.raises(CheckpointError, match="classes"):
        train_member(renamed, proposals, CLASSIFIER, TRAIN, 0, finished, device="cpu", progress=False)


def test_members_differ_and_unreadable_images_are_skipped(
    data: tuple[Dataset, dict[str, ImageProposals]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    dataset, proposals = data
    broken_id = dataset[1].image_id

    def loader(record):  # type: ignore[no-untyped-def]
        if record.image_id == broken_id:
            raise DataError(f"{record.image_id}.jpg", "cannot decode")
        return dataset.image_loader(record)

    flaky = dataclasses.replace(dataset, image_loader=loader)
    one_epoch = dataclasses.replace(TRAIN, epochs=1, photometric=False)
    paths = train_members(flaky, proposals, CLASSIFIER, one_epoch, tmp_path, device="cpu", progress=False)
    assert paths == [member_path(tmp_path, 0), member_path(tmp_path, 1)]
    assert "unreadable image skipped" in caplog.text
    first, second = (torch.load(p, weights_only=True) for p in paths)
    assert first["extra"]["unreadable_images"] == 1
    assert first["config"]["member"]["seed"] == 0 and second["config"]["member"]["seed"] == 1
    assert any(not torch.equal(first["model"][k], second["model"][k]) for k in first["model"])


def test_members_trained_in_parallel_processes_equal_those_trained_in_turn(
    data: tuple[Dataset, dict[str, ImageProposals]], finished: Path, tmp_path: Path
) -> None:
    # Two spawned processes, one thread each (TRAIN has num_threads=1): member 0 must come out
    # bit-identical to the fixture's, trained in this process with the same single thread.
    dataset, proposals = data
    paths = train_members(dataset, proposals, CLASSIFIER, dataclasses.replace(TRAIN, parallel=2), tmp_path, device="cpu", progress=False)
    assert paths == [member_path(tmp_path, 0), member_path(tmp_path, 1)]
    ours, reference = torch.load(paths[0], weights_only=True)["model"], torch.load(finished, weights_only=True)["model"]
    assert all(torch.equal(ours[k], reference[k]) for k in reference)
    assert torch.load(paths[1], weights_only=True)["extra"]["epoch"] == TRAIN.epochs


def test_members_share_their_initial_weights_unless_init_is_member() -> None:
    def initial(train: TrainConfig, member: int) -> dict[str, torch.Tensor]:
        with torch.random.fork_rng():
            return train_module._new_member(CLASSIFIER, train, 3, torch.device("cpu"), member).model.state_dict()

    def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
        return all(torch.equal(a[k], b[k]) for k in a)

    own = dataclasses.replace(TRAIN, init="member")
    assert init_seed(TRAIN, 0) == init_seed(TRAIN, 1) == TRAIN.seed
    assert init_seed(own, 0) != init_seed(own, 1)
    assert same(initial(TRAIN, 0), initial(TRAIN, 1))
    assert not same(initial(own, 0), initial(own, 1))
    assert same(initial(own, 1), initial(own, 1))


def test_learning_rate_schedules() -> None:
    step = TrainConfig(lr=0.1, lr_decay=0.96, decay_epochs=8)
    assert [learning_rate(step, e) for e in (0, 7, 8, 16)] == pytest.approx([0.1, 0.1, 0.096, 0.1 * 0.96**2])
    cosine = TrainConfig(lr=0.1, schedule="cosine", epochs=2)
    assert learning_rate(cosine, 0, 0, 10) == pytest.approx(0.1)
    assert learning_rate(cosine, 1, 0, 10) == pytest.approx(0.05)
    assert learning_rate(cosine, 1, 9, 10) < 0.002


def test_train_config_is_strict_and_the_cpu_preset_loads() -> None:
    with pytest.raises(ConfigError, match="unknown key"):
        from_dict(TrainConfig, {"epoch": 3})
    with pytest.raises(ConfigError):
        from_dict(TrainConfig, {"schedule": "linear"})
    with pytest.raises(ConfigError):
        from_dict(TrainConfig, {"polyak": 1.0})
    # The whole file must load as a run config (every section strict), and set the CPU sizes.
    config = load_config(REPO / "configs" / "bccd_cpu.yaml")
    classifier, train = config.classifier, config.train
    assert 64 <= classifier.crop_size <= 128 and classifier.batch_norm and classifier.width <= 0.5
    assert train.batch_size == 128 and train.fg_fraction == 0.25 and train.schedule == "step"
    assert train.lr_decay == 0.96 and train.decay_epochs == 8


def test_cpu_batches_are_the_windows_the_device_path_cuts(data: tuple[Dataset, dict[str, ImageProposals]]) -> None:
    # On a CPU a batch is cut by warp_crops_host (OpenCV, uint8); elsewhere by warp_crops then
    # flipped. Same windows, same mirrors, same labels; pixels within OpenCV's rounding.
    dataset, proposals = data
    windows, _ = train_module.build_training_windows(dataset, proposals)
    sampler = train_module.WindowSampler(windows, 32, 0.25, 2, True, 0, 0)
    batch = next(iter(sampler.epoch(0)))
    assert batch.flips.any() and not batch.flips.all()
    source = train_module._ImageSource(dataset, cache=True)
    crops, labels = train_module._batch_inputs(batch, source, CLASSIFIER, torch.device("cpu"), None)
    assert crops.shape == (32, 3, 48, 48) and crops.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(labels, torch.from_numpy(batch.labels))
    images = [source.get(index) for index in batch.image_indices]
    expected = train_module.warp_crops(images, batch.boxes, size=48, padding=CLASSIFIER.padding())
    expected = torch.where(torch.from_numpy(batch.flips).view(-1, 1, 1, 1), expected.flip(-1), expected)
    difference = (crops - expected).abs()
    assert difference.mean() < 0.01 and difference.max() < 0.1
