"""The built-in synthetic dataset: determinism, ground-truth exactness and variety."""

from __future__ import annotations

import numpy as np
import pytest

from detection.data.records import Dataset
from detection.data.synthetic import (
    DIFFICULT_VISIBLE_FRACTION,
    MIN_BOX_SIDE,
    SYNTHETIC_CLASSES,
    clear_synthetic_caches,
    parse_synthetic_spec,
    render_synthetic_image,
    synthetic_dataset,
    synthetic_image_id,
    synthetic_scene,
)


@pytest.fixture(scope="module")
def hundred() -> Dataset:
    """synthetic:100:0, laid out only (no pixels), shared by the statistics tests."""
    return synthetic_dataset(100, 0)


def _same_records(a: Dataset, b: Dataset) -> bool:
    return len(a) == len(b) and all(
        ra.image_id == rb.image_id
        and (ra.width, ra.height) == (rb.width, rb.height)
        and np.array_equal(ra.boxes, rb.boxes)
        and np.array_equal(ra.labels, rb.labels)
        and np.array_equal(ra.difficult, rb.difficult)
        for ra, rb in zip(a, b)
    )


def test_classes_are_fixed_and_distinct() -> None:
    assert len(SYNTHETIC_CLASSES) >= 10
    assert len(set(SYNTHETIC_CLASSES)) == len(SYNTHETIC_CLASSES)
    assert SYNTHETIC_CLASSES[:3] == ["circle", "square", "triangle"]


def test_same_seed_gives_identical_records_and_pixels() -> None:
    first = synthetic_dataset(6, 3)
    pixels = [first.load_image(i) for i in range(len(first))]
    clear_synthetic_caches()
    second = synthetic_dataset(6, 3)
    assert _same_records(first, second)
    assert first.fingerprint() == second.fingerprint()
    for i, image in enumerate(pixels):
        assert np.array_equal(image, second.load_image(i))


def test_different_seed_differs() -> None:
    a, b = synthetic_dataset(4, 0), synthetic_dataset(4, 1)
    assert a.fingerprint() != b.fingerprint()
    assert a[0].image_id != b[0].image_id
    image_a, image_b = a.load_image(0), b.load_image(0)
    assert image_a.shape != image_b.shape or not np.array_equal(image_a, image_b)


def test_image_does_not_depend_on_dataset_size() -> None:
    small, large = synthetic_dataset(10, 5), synthetic_dataset(20, 5)
    assert _same_records(small, Dataset(large.spec, large.classes, large.records[:10], large.image_loader))
    assert np.array_equal(small.load_image(3), large.load_image(3))


def test_spec_parsing_and_dataset_spec() -> None:
    assert parse_synthetic_spec("synthetic") == (200, 0)
    assert parse_synthetic_spec("synthetic:7") == (7, 0)
    assert parse_synthetic_spec("synthetic:7:3") == (7, 3)
    for bad in ("voc:/x", "synthetic:a", "synthetic:1:2:3", "synthetic:-1"):
        with pytest.raises(ValueError):
            parse_synthetic_spec(bad)
    dataset = synthetic_dataset(spec="synthetic:5:2")
    assert dataset.spec == "synthetic:5:2"
    assert len(dataset) == 5
    assert dataset.classes == SYNTHETIC_CLASSES
    assert [r.image_id for r in dataset] == [synthetic_image_id(2, i) for i in range(5)]
    assert dataset[0].image_id == "syn2_00000"
    assert dataset[0].path is None


def test_every_class_appears_and_object_counts(hundred: Dataset) -> None:
    counts = np.bincount(np.concatenate([r.labels for r in hundred]), minlength=len(SYNTHETIC_CLASSES))
    assert len(counts) == len(SYNTHETIC_CLASSES)
    assert counts.min() >= 10, counts
    per_image = np.array([r.num_boxes for r in hundred])
    assert per_image.min() >= 1 and per_image.max() <= 12
    # The count is spread, not pinned to one value.
    assert per_image.min() <= 3 and per_image.max() >= 9


def test_image_sizes(hundred: Dataset) -> None:
    widths = np.array([r.width for r in hundred])
    heights = np.array([r.height for r in hundred])
    assert widths.min() >= 300 and widths.max() <= 500
    assert heights.min() >= 300 and heights.max() <= 500
    assert len(set(zip(widths, heights))) > 50


def test_boxes_inside_integer_and_not_degenerate(hundred: Dataset) -> None:
    for record in hundred:
        boxes = record.boxes
        assert boxes.dtype == np.float32
        assert np.array_equal(boxes, np.round(boxes))
        assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
        assert (boxes[:, 2] <= record.width).all() and (boxes[:, 3] <= record.height).all()
        assert (boxes[:, 2] - boxes[:, 0] >= MIN_BOX_SIDE).all()
        assert (boxes[:, 3] - boxes[:, 1] >= MIN_BOX_SIDE).all()
        assert record.labels.dtype == np.int64
        assert ((record.labels >= 0) & (record.labels < len(SYNTHETIC_CLASSES))).all()


def test_range_of_sizes(hundred: Dataset) -> None:
    boxes = np.concatenate([r.boxes for r in hundred])
    longer = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert (longer < 32).sum() >= 20
    assert (longer > 150).sum() >= 20


def test_some_objects_are_difficult(hundred: Dataset) -> None:
    difficult = np.concatenate([r.difficult for r in hundred])
    assert 0 < difficult.sum() < 0.2 * len(difficult)


def test_image_format_and_loader() -> None:
    dataset = synthetic_dataset(3, 11)
    for record in dataset:
        image = dataset.load_image(record)
        assert image.dtype == np.uint8
        assert image.shape == (record.height, record.width, 3)
        assert image.flags.c_contiguous and image.flags.writeable
        # Real pixels, not a constant canvas.
        assert image.std() > 10
    image = dataset.load_image(0)
    image[:] = 0
    assert dataset.load_image(0).any(), "the loader must hand out copies, not the cached array"


def test_loader_rejects_foreign_ids() -> None:
    dataset = synthetic_dataset(1, 0)
    record = dataset[0]
    record.image_id = "voc_000001"
    with pytest.raises(ValueError):
        dataset.load_image(record)


def test_render_matches_records() -> None:
    dataset = synthetic_dataset(4, 9)
    for i, record in enumerate(dataset):
        image, boxes, labels, difficult = render_synthetic_image(9, i)
        assert image.shape == (record.height, record.width, 3)
        assert np.array_equal(boxes, record.boxes)
        assert np.array_equal(labels, record.labels)
        assert np.array_equal(difficult, record.difficult)


def test_boxes_are_tight_around_visible_pixels() -> None:
    occluded = 0
    for i in range(12):
        scene = synthetic_scene(0, i)
        assert scene.owner.shape == scene.image.shape[:2]
        gt_ids = set(np.unique(scene.owner[scene.owner >= 0]).tolist())
        assert gt_ids == set(range(len(scene.boxes)))
        for j, box in enumerate(scene.boxes.astype(int)):
            rows = np.flatnonzero((scene.owner == j).any(axis=1))
            cols = np.flatnonzero((scene.owner == j).any(axis=0))
            assert (cols[0], rows[0], cols[-1] + 1, rows[-1] + 1) == tuple(box)
        fractions = scene.visible_fraction
        assert ((fractions > 0) & (fractions <= 1)).all()
        assert np.array_equal(scene.difficult, fractions < DIFFICULT_VISIBLE_FRACTION)
        occluded += int((fractions < 1).sum())
    assert occluded > 0


def test_objects_stand_out_from_their_surroundings() -> None:
    """The pixels an object owns differ in colour from the ring of pixels just outside it."""
    import cv2

    contrasts = []
    for i in range(6):
        scene = synthetic_scene(1, i)
        image = scene.image.astype(np.float32)
        for j in range(len(scene.boxes)):
            mask = (scene.owner == j).astype(np.uint8)
            if mask.sum() < 200:
                continue
            ring = cv2.dilate(mask, np.ones((7, 7), np.uint8)).astype(bool) & ~mask.astype(bool)
            contrasts.append(np.abs(image[mask.astype(bool)].mean(0) - image[ring].mean(0)).max())
    # Most objects contrast clearly with what surrounds them; a few may blend in, as in photos.
    assert np.median(contrasts) > 25


def test_cached_arrays_cannot_be_corrupted() -> None:
    scene = synthetic_scene(0, 0)
    for array in (scene.image, scene.boxes, scene.labels, scene.difficult, scene.owner):
        assert not array.flags.writeable
    record = synthetic_dataset(1, 0)[0]
    record.boxes[:] = -1  # records own their arrays
    assert (synthetic_dataset(1, 0)[0].boxes >= 0).all()
