"""Selective Search wrapper: convention, determinism, equality with OpenCV's modes, scaling."""

from __future__ import annotations

import dataclasses
import logging

import cv2
import numpy as np
import pytest
from sklearn.datasets import load_sample_image

from detection.core.boxes import box_iou_numpy
from proposals.selective_search import (
    RECIPES,
    SelectiveSearchConfig,
    _count_rects,
    _rank,
    _scaled_segmentations,
    configure_opencv_threads,
    opencv_selective_search,
    recipe_boxes,
    selective_search,
)

logger = logging.getLogger(__name__)

# Full-size segmentation with no filter: the settings under which we must equal OpenCV.
RAW = SelectiveSearchConfig(mode="fast", max_side=None, min_side=0)

# (x1, y1, x2, y2) and RGB colour of the objects drawn by ``rectangles_image``.
RECTANGLES = [
    ((20, 30, 80, 90), (200, 40, 40)),
    ((110, 15, 185, 70), (40, 60, 210)),
    ((95, 95, 170, 150), (60, 180, 70)),
]


def _fit(image: np.ndarray, max_side: int) -> np.ndarray:
    """Resize so the longer side is ``max_side`` (INTER_AREA)."""
    height, width = image.shape[:2]
    factor = max_side / max(height, width)
    return cv2.resize(image, (round(width * factor), round(height * factor)), interpolation=cv2.INTER_AREA)


@pytest.fixture(scope="module")
def china() -> np.ndarray:
    """A 200 x 132 crop of sklearn's china.jpg (temple, trees, sky)."""
    return _fit(load_sample_image("china.jpg")[40:370, 60:560], 200)


@pytest.fixture(scope="module")
def flower() -> np.ndarray:
    """A 200 x 150 crop of sklearn's flower.jpg."""
    return _fit(load_sample_image("flower.jpg")[20:420, 40:573], 200)


@pytest.fixture(scope="module")
def rectangles_image() -> np.ndarray:
    """160 x 200 noisy gradient background with the solid ``RECTANGLES`` drawn on it."""
    rng = np.random.default_rng(0)
    ramp = np.linspace(90, 150, 200)[None, :, None]
    image = np.clip(ramp + rng.normal(0, 6, (160, 200, 3)), 0, 255)
    for (x1, y1, x2, y2), colour in RECTANGLES:
        image[y1:y2, x1:x2] = colour
    return image.astype(np.uint8)


@pytest.fixture(scope="module")
def small_flower(flower: np.ndarray) -> np.ndarray:
    """``flower`` at 120 x 90, for tests that run Selective Search several times."""
    return _fit(flower, 120)


@pytest.fixture(scope="module")
def raw(china: np.ndarray, flower: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``RAW`` proposals of each sample image, computed once for the module."""
    return {"china": selective_search(china, RAW), "flower": selective_search(flower, RAW)}


def _row_set(boxes: np.ndarray) -> np.ndarray:
    """Distinct rows of ``(N, 4)`` boxes, sorted: the set view of a proposal list."""
    return np.unique(np.asarray(boxes, dtype=np.float32), axis=0)


def test_output_convention(china: np.ndarray, raw: dict) -> None:
    boxes, scores = raw["china"]
    height, width = china.shape[:2]
    assert boxes.dtype == np.float32 and scores.dtype == np.float32
    assert boxes.ndim == 2 and boxes.shape[1] == 4 and scores.shape == (len(boxes),)
    assert len(boxes) > 50
    assert np.all(boxes[:, 0] < boxes[:, 2]) and np.all(boxes[:, 1] < boxes[:, 3])
    assert boxes[:, [0, 1]].min() >= 0 and boxes[:, 2].max() <= width and boxes[:, 3].max() <= height
    assert np.array_equal(boxes, np.round(boxes))
    # OpenCV's whole-image region comes back as the full image in our convention.
    assert np.any(np.all(boxes == [0, 0, width, height], axis=1))
    assert scores[0] == 1.0 and scores[-1] > 0 and np.all(np.diff(scores) < 0)


def test_no_duplicate_rows(raw: dict) -> None:
    boxes, _ = raw["china"]
    assert len(_row_set(boxes)) == len(boxes)


def test_repeated_calls_identical(china: np.ndarray, raw: dict) -> None:
    boxes, scores = selective_search(china, RAW)
    assert np.array_equal(boxes, raw["china"][0]) and np.array_equal(scores, raw["china"][1])


def test_identical_across_opencv_thread_counts(small_flower: np.ndarray) -> None:
    before = cv2.getNumThreads()
    try:
        results = []
        for threads in (1, 2, 0):
            configure_opencv_threads(threads)
            results.append(selective_search(small_flower, RAW))
    finally:
        configure_opencv_threads(before)
    for boxes, scores in results[1:]:
        assert np.array_equal(boxes, results[0][0]) and np.array_equal(scores, results[0][1])


def test_opencv_returns_the_same_set_each_call(small_flower: np.ndarray) -> None:
    # Only the order is random (rand() * level); the ranking rests on the set being stable.
    first, second = opencv_selective_search(small_flower), opencv_selective_search(small_flower)
    assert len(first) == len(second) == len(_row_set(first))
    assert np.array_equal(_row_set(first), _row_set(second))


def test_ranking_is_a_function_of_the_multiset() -> None:
    rng = np.random.default_rng(1)
    rects = rng.integers(0, 40, (300, 4))
    rects = np.concatenate([rects, rects[:50], rects[:10]])  # some rects voted 2 or 3 times
    orders = []
    for _ in range(3):
        unique, votes = _count_rects(rng.permutation(rects))
        boxes = np.concatenate([unique[:, :2], unique[:, :2] + unique[:, 2:]], axis=1).astype(np.float32)
        orders.append(boxes[_rank(boxes, votes)])
        sorted_votes = votes[_rank(boxes, votes)]
        assert np.all(np.diff(sorted_votes) <= 0) and sorted_votes[0] == 3
    assert np.array_equal(orders[0], orders[1]) and np.array_equal(orders[0], orders[2])


@pytest.mark.parametrize("image_name", ["china", "flower"])
def test_scale_one_fast_equals_opencv_fast(image_name: str, raw: dict, request: pytest.FixtureRequest) -> None:
    image = request.getfixturevalue(image_name)
    boxes, _ = raw[image_name]
    assert np.array_equal(_row_set(boxes), _row_set(opencv_selective_search(image, "fast")))


def test_quality_equals_opencv_quality_with_its_blue_channel(small_flower: np.ndarray) -> None:
    # OpenCV's quality mode segments the blue channel where it means hue (a split() into a
    # reused buffer): with that one swap our recipe is OpenCV's exactly.
    small = small_flower
    recipe = RECIPES["quality"]
    as_opencv = dataclasses.replace(
        recipe, colour_spaces=tuple("blue" if name == "hue" else name for name in recipe.colour_spaces)
    )
    rects, _ = recipe_boxes(small, SelectiveSearchConfig(mode="quality"), as_opencv)
    ours = np.concatenate([rects[:, :2], rects[:, :2] + rects[:, 2:]], axis=1)
    assert np.array_equal(_row_set(ours), _row_set(opencv_selective_search(small, "quality")))
    # The intended hue recipe shares most boxes with OpenCV's.
    boxes, _ = selective_search(small, SelectiveSearchConfig(mode="quality", max_side=None, min_side=0))
    shared = len(set(map(tuple, boxes)) & set(map(tuple, ours.astype(np.float32))))
    assert shared > 0.8 * len(ours)


def test_scaled_segmentation_parameters() -> None:
    def pairs(mode: str, **changes: object) -> list[tuple[float, int]]:
        config = SelectiveSearchConfig(mode=mode, **changes)  # type: ignore[arg-type]
        return _scaled_segmentations(RECIPES[mode], config)

    assert pairs("fast") == [(150.0, 100), (300.0, 100), (450.0, 100)]
    assert pairs("fast", superpixel_scale=2.0) == [(300.0, 100), (600.0, 100), (900.0, 100)]
    assert pairs("fast", superpixel_scale=2.0, scale_min_size=True) == [(300.0, 200), (600.0, 200), (900.0, 200)]
    assert pairs("fast", k=200) == [(200.0, 100), (400.0, 100), (600.0, 100)]
    assert pairs("quality") == [(k, 100) for k in (150.0, 300.0, 450.0, 600.0, 750.0)]
    assert pairs("uijlings_fast") == [(50.0, 50), (100.0, 100)]
    assert pairs("uijlings_fast", superpixel_scale=2.0) == [(100.0, 50), (200.0, 100)]
    assert pairs("uijlings_fast", k=80, superpixel_scale=2.0, scale_min_size=False) == [(160.0, 80), (320.0, 160)]


@pytest.mark.parametrize("image_name", ["china", "flower"])
def test_double_superpixels_give_far_fewer_boxes(
    image_name: str, raw: dict, request: pytest.FixtureRequest
) -> None:
    image = request.getfixturevalue(image_name)
    single = len(raw[image_name][0])
    double = len(selective_search(image, dataclasses.replace(RAW, superpixel_scale=2.0))[0])
    logger.info("%s: %d boxes at superpixel_scale 1, %d at 2 (ratio %.2f)", image_name, single, double, double / single)
    assert double < 0.8 * single


def test_uijlings_fast_mode_runs(rectangles_image: np.ndarray) -> None:
    boxes, scores = selective_search(rectangles_image, SelectiveSearchConfig(mode="uijlings_fast"))
    assert boxes.dtype == np.float32 and len(boxes) == len(scores) > 0


def test_resize_maps_boxes_back_to_original_pixels(china: np.ndarray) -> None:
    # Segmenting at max_side 120 equals segmenting the resized image ourselves and scaling its
    # boxes back per axis, rounded to whole pixels.
    height, width = china.shape[:2]
    small_size = (120, round(height * 120 / width))
    boxes, _ = selective_search(china, dataclasses.replace(RAW, max_side=120))
    small_boxes, _ = selective_search(cv2.resize(china, small_size, interpolation=cv2.INTER_AREA), RAW)
    factors = np.array([width / small_size[0], height / small_size[1]] * 2)
    assert np.array_equal(_row_set(boxes), _row_set(np.rint(small_boxes * factors)))
    assert boxes[:, 2].max() == width and boxes[:, 3].max() == height


def test_min_side_filter_and_max_boxes_keep_the_order(china: np.ndarray, raw: dict) -> None:
    boxes, _ = raw["china"]
    sides = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
    assert sides.min() < 16
    filtered, filtered_scores = selective_search(china, dataclasses.replace(RAW, min_side=16))
    assert np.array_equal(filtered, boxes[sides >= 16])
    capped, capped_scores = selective_search(china, dataclasses.replace(RAW, min_side=16, max_boxes=10))
    assert np.array_equal(capped, filtered[:10]) and np.array_equal(capped_scores, filtered_scores[:10])


def test_each_rectangle_has_a_close_proposal(rectangles_image: np.ndarray) -> None:
    boxes, _ = selective_search(rectangles_image, SelectiveSearchConfig())
    truth = np.array([rect for rect, _ in RECTANGLES], dtype=np.float32)
    best = box_iou_numpy(truth, boxes).max(axis=1)
    assert np.all(best > 0.8), best


def test_grayscale_like_input(china: np.ndarray) -> None:
    gray = np.repeat(cv2.cvtColor(china, cv2.COLOR_RGB2GRAY)[:, :, None], 3, axis=2)
    boxes, scores = selective_search(gray, SelectiveSearchConfig())
    assert len(boxes) == len(scores) > 10


def test_non_contiguous_input(small_flower: np.ndarray) -> None:
    mirrored = small_flower[:, ::-1]
    boxes, _ = selective_search(mirrored, SelectiveSearchConfig())
    expected, _ = selective_search(np.ascontiguousarray(mirrored), SelectiveSearchConfig())
    assert np.array_equal(boxes, expected)


def test_tiny_image() -> None:
    boxes, scores = selective_search(np.full((3, 4, 3), 7, np.uint8), RAW)
    assert np.array_equal(boxes, [[0, 0, 4, 3]]) and np.array_equal(scores, [1.0])


@pytest.mark.parametrize(
    "bad",
    [
        np.zeros((20, 20, 3), np.float32),
        np.zeros((20, 20), np.uint8),
        np.zeros((20, 20, 4), np.uint8),
        np.zeros((0, 20, 3), np.uint8),
        [[[0, 0, 0]]],
    ],
)
def test_bad_images_raise_value_error(bad: object) -> None:
    with pytest.raises(ValueError, match="image"):
        selective_search(bad, SelectiveSearchConfig())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image"):
        opencv_selective_search(bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "changes",
    [{"mode": "slow"}, {"superpixel_scale": 0}, {"k": -1}, {"max_side": 0}, {"min_side": -1}, {"max_boxes": -1}],
)
def test_bad_config_raises_value_error(changes: dict) -> None:
    with pytest.raises(ValueError):
        SelectiveSearchConfig(**changes)
