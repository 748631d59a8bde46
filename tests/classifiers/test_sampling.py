"""R-CNN window labelling and batch sampling: hand-worked IoUs, the 32/96 split, seeds, flips."""

from __future__ import annotations

import numpy as np
import pytest

from classifiers.sampling import (
    ImageWindows,
    WindowSampler,
    build_training_windows,
    label_windows,
)
from detection.data.records import Dataset, ImageRecord
from proposals.store import ImageProposals


def _record(boxes: list[list[float]], labels: list[int], difficult: list[bool] | None = None, crowd: list[bool] | None = None) -> ImageRecord:
    return ImageRecord("img", None, 100, 100, np.array(boxes, np.float32), np.array(labels), difficult, crowd)


def _rows(boxes: np.ndarray) -> list[tuple[float, ...]]:
    return [tuple(float(v) for v in row) for row in boxes]


# Ground truth: A = [0, 0, 10, 10] of dataset class 2, B = [20, 20, 40, 40] of class 0.
GT = [[0, 0, 10, 10], [20, 20, 40, 40]]
PROPOSALS = np.array(
    [
        [0, 0, 10, 20],  # IoU with A = 100 / 200 = 0.5 exactly: foreground
        [0, 0, 10, 21],  # IoU with A = 100 / 210 = 0.476: background
        [20, 20, 40, 30],  # IoU with B = 200 / 400 = 0.5: foreground, class 0 -> index 1
        [25, 25, 45, 45],  # IoU with B = 225 / 575 = 0.391: background
        [60, 60, 90, 90],  # IoU 0 with both: background under [0, 0.5), ignored under [0.1, 0.5)
        [5, 5, 5, 30],  # zero width: dropped
    ],
    np.float32,
)


def test_labels_follow_the_hand_worked_ious() -> None:
    windows = label_windows(_record(GT, [2, 0]), PROPOSALS, index=7)
    assert windows.index == 7
    # Proposals first, then the ground-truth boxes themselves (IoU 1).
    assert _rows(windows.fg_boxes) == [(0, 0, 10, 20), (20, 20, 40, 30), (0, 0, 10, 10), (20, 20, 40, 40)]
    assert windows.fg_labels.tolist() == [3, 1, 3, 1]
    assert windows.fg_labels.dtype == np.int64
    assert _rows(windows.bg_boxes) == [(0, 0, 10, 21), (25, 25, 45, 45), (60, 60, 90, 90)]
    assert windows.num_ignored == 0


def test_windows_between_the_ranges_are_ignored() -> None:
    windows = label_windows(_record(GT, [2, 0]), PROPOSALS, bg_iou_low=0.1, bg_iou_high=0.45)
    # 0.476 falls between bg_iou_high and fg_iou; 0 falls below bg_iou_low.
    assert _rows(windows.bg_boxes) == [(25, 25, 45, 45)]
    assert windows.num_ignored == 2
    assert len(windows.fg_boxes) == 4


def test_difficult_ground_truth_stays_positive_and_crowd_is_never_background() -> None:
    windows = label_windows(_record(GT, [2, 0], difficult=[True, False]), PROPOSALS)
    assert windows.fg_labels.tolist() == [3, 1, 3, 1]
    crowd = label_windows(_record(GT, [2, 0], crowd=[False, True]), PROPOSALS)
    # B is a crowd region: no positives of it, and a window overlapping it by >= 0.5 is
    # ignored, not background; one overlapping it by 0.391 is still background.
    assert crowd.fg_labels.tolist() == [3, 3]
    assert (20, 20, 40, 30) not in _rows(crowd.bg_boxes)
    assert _rows(crowd.bg_boxes) == [(0, 0, 10, 21), (25, 25, 45, 45), (60, 60, 90, 90)]
    assert crowd.num_ignored == 1


def test_zero_area_ground_truth_is_dropped_and_an_image_without_objects_is_all_background() -> None:
    windows = label_windows(_record([[5, 5, 5, 9], [0, 0, 10, 10]], [1, 0]), None)
    assert _rows(windows.fg_boxes) == [(0, 0, 10, 10)] and len(windows.bg_boxes) == 0
    assert not windows.used_proposals
    empty = label_windows(_record([], []), PROPOSALS)
    assert len(empty.fg_boxes) == 0 and len(empty.bg_boxes) == 5


def test_failed_or_missing_proposals_fall_back_to_ground_truth(caplog: pytest.LogCaptureFixture) -> None:
    records = [
        ImageRecord("a", None, 100, 100, np.array(GT, np.float32), np.array([2, 0])),
        ImageRecord("b", None, 100, 100, np.array(GT, np.float32), np.array([2, 0])),
        ImageRecord("c", None, 100, 100, np.array(GT, np.float32), np.array([2, 0])),
    ]
    dataset = Dataset("test", ["x", "y", "z"], records, lambda r: np.zeros((100, 100, 3), np.uint8))
    proposals = {
        "a": ImageProposals("a", PROPOSALS, np.zeros(6, np.float32), np.zeros(6, np.uint8)),
        "b": ImageProposals.failed("b", "unreadable"),
    }
    windows, stats = build_training_windows(dataset, proposals)
    assert stats.images_without_proposals == 2
    assert "no usable proposals" in caplog.text
    assert [len(w.fg_boxes) for w in windows] == [4, 2, 2]
    assert [len(w.bg_boxes) for w in windows] == [3, 0, 0]
    assert stats.foreground == 8 and stats.background == 3


def _synthetic_windows(num_images: int, fg: int, bg: int, seed: int = 0) -> list[ImageWindows]:
    rng = np.random.default_rng(seed)

    def boxes(n: int) -> np.ndarray:
        corner = rng.uniform(0, 50, (n, 2))
        return np.concatenate([corner, corner + rng.uniform(5, 40, (n, 2))], axis=1).astype(np.float32)

    return [ImageWindows(i, boxes(fg), rng.integers(1, 4, fg).astype(np.int64), boxes(bg)) for i in range(num_images)]


def test_batches_hold_32_foreground_and_96_background_when_enough_exist() -> None:
    sampler = WindowSampler(_synthetic_windows(10, fg=40, bg=200), batch_size=128, fg_fraction=0.25, images_per_batch=2)
    batches = list(sampler.epoch(0))
    assert len(batches) == len(sampler) == 5
    for batch in batches:
        assert len(batch) == 128 and batch.num_foreground == 32
        assert sum(len(b) for b in batch.boxes) == 128
        assert batch.labels.dtype == np.int64 and batch.flips.dtype == bool
        assert all(b.dtype == np.float32 and b.shape[1] == 4 for b in batch.boxes)
    # Every image is visited once per epoch.
    assert sorted(i for batch in batches for i in batch.image_indices) == list(range(10))


def test_labels_match_the_windows_they_came_from() -> None:
    windows = _synthetic_windows(4, fg=30, bg=100)
    lookup = {}
    for w in windows:
        lookup.update({(w.index, tuple(box)): int(label) for box, label in zip(w.fg_boxes.tolist(), w.fg_labels)})
        lookup.update({(w.index, tuple(box)): 0 for box in w.bg_boxes.tolist()})
    for batch in WindowSampler(windows, images_per_batch=2).epoch(3):
        flat = [(index, tuple(box)) for index, boxes in zip(batch.image_indices, batch.boxes) for box in boxes.tolist()]
        assert [lookup[key] for key in flat] == batch.labels.tolist()
        assert len(set(flat)) == len(flat)  # no duplicates


def test_background_fills_in_when_foreground_is_short_and_small_images_give_small_batches() -> None:
    sampler = WindowSampler(_synthetic_windows(2, fg=5, bg=200), images_per_batch=2)
    (batch,) = list(sampler.epoch(0))
    assert len(batch) == 128 and batch.num_foreground == 10
    # Too few background windows: foreground fills in; too few of both: a smaller batch.
    (batch,) = list(WindowSampler(_synthetic_windows(2, fg=60, bg=30), images_per_batch=2).epoch(0))
    assert len(batch) == 128 and batch.num_foreground == 128 - 60
    (batch,) = list(WindowSampler(_synthetic_windows(1, fg=3, bg=20), images_per_batch=2).epoch(0))
    assert len(batch) == 23 and batch.num_foreground == 3


def _fingerprint(sampler: WindowSampler, epoch: int) -> list[tuple]:
    return [
        (tuple(b.image_indices), tuple(np.concatenate(b.boxes).ravel().tolist()), tuple(b.labels), tuple(b.flips), b.aug_seed)
        for b in sampler.epoch(epoch)
    ]


def test_the_same_seed_and_member_give_the_same_batches_and_others_differ() -> None:
    windows = _synthetic_windows(12, fg=40, bg=200)
    first = _fingerprint(WindowSampler(windows, seed=3, member=1), 0)
    assert first == _fingerprint(WindowSampler(windows, seed=3, member=1), 0)
    other_member = WindowSampler(windows, seed=3, member=2)
    assert [b[0] for b in _fingerprint(other_member, 0)] != [b[0] for b in first]  # order
    assert first != _fingerprint(WindowSampler(windows, seed=4, member=1), 0)
    assert first != _fingerprint(WindowSampler(windows, seed=3, member=1), 1)  # epochs differ
    # Same order, different draws: members differ in the windows, not only in the order.
    one = WindowSampler(windows, images_per_batch=12, seed=0, member=0)
    two = WindowSampler(windows, images_per_batch=12, seed=0, member=1)
    assert _fingerprint(one, 0)[0][1] != _fingerprint(two, 0)[0][1]


def test_about_half_the_windows_are_mirrored_and_none_without_hflip() -> None:
    windows = _synthetic_windows(20, fg=40, bg=200)
    flips = np.concatenate([b.flips for b in WindowSampler(windows, hflip=True).epoch(0)])
    assert len(flips) == 10 * 128
    assert 0.45 < flips.mean() < 0.55
    assert not any(b.flips.any() for b in WindowSampler(windows, hflip=False).epoch(0))


def test_bad_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        WindowSampler([], batch_size=128)
    with pytest.raises(ValueError):
        WindowSampler(_synthetic_windows(1, 1, 1), fg_fraction=1.5)
    dataset = Dataset("test", ["x"], [], lambda r: np.zeros((1, 1, 3), np.uint8))
    with pytest.raises(ValueError):
        build_training_windows(dataset, {}, fg_iou=0.5, bg_iou_high=0.6)


def test_windows_from_a_real_proposal_store(tmp_path) -> None:
    from detection.data.synthetic import synthetic_dataset
    from proposals.propose import ProposalConfig, run_proposals
    from proposals.selective_search import SelectiveSearchConfig
    from proposals.store import ProposalStore

    dataset = synthetic_dataset(3, 0)
    config = ProposalConfig(method="ss", selective_search=SelectiveSearchConfig(superpixel_scale=2.0, max_side=160))
    run_proposals(dataset, config, tmp_path / "store", progress=False)
    proposals = ProposalStore.open(tmp_path / "store", dataset).load_all()
    windows, stats = build_training_windows(dataset, proposals)
    assert stats.images == 3 and stats.images_without_proposals == 0
    assert stats.foreground >= sum(r.num_boxes for r in dataset)  # at least the ground truth
    assert stats.background > 0
    batch = next(WindowSampler(windows, batch_size=64, images_per_batch=3).epoch(0))
    assert len(batch) == 64


def test_fg_balance_gives_a_rare_class_an_equal_share() -> None:
    # One image: 99 windows of class 1, 1 of class 2, a quota of 2 foreground windows. Uniform
    # draws pick the rare window with probability 2/100; balanced draws give it weight 1/1 against
    # 99 * 1/99 for the other class, so it is the first pick half the time and about 3/4 overall.
    windows = [ImageWindows(0, np.tile(np.float32([[0, 0, 10, 10]]), (100, 1)), np.array([1] * 99 + [2], np.int64), np.zeros((200, 4), np.float32))]
    def rare_share(balance: bool) -> float:
        sampler = WindowSampler(windows, batch_size=8, fg_fraction=0.25, images_per_batch=1, fg_balance=balance)
        return float(np.mean([(next(sampler.epoch(e)).labels == 2).any() for e in range(400)]))

    assert rare_share(False) < 0.05
    assert 0.68 < rare_share(True) < 0.82
    assert WindowSampler(windows, fg_balance=True).state_dict()["fg_balance"] is True
    assert "fg_balance" not in WindowSampler(windows).state_dict()  # unchanged identity for existing members
