"""Selective Search proposals (Uijlings et al., IJCV 2013) on OpenCV's ``ximgproc.segmentation``.

The GoogLeNet detection entry used Selective Search "with the superpixel size doubled", which
roughly halved the proposals. This module builds the Selective Search strategy itself, so that
the graph-segmentation parameters can be scaled, and returns boxes in the project's convention
(float32 ``(x1, y1, x2, y2)``, 0-based continuous pixels, see :mod:`detection.core.boxes`) with a
deterministic ranking.

Recipes (the values at ``superpixel_scale = 1``; OpenCV 4.x ``selectivesearchsegmentation.cpp``,
checked empirically against ``switchToSelectiveSearchFast/Quality`` in the tests):

- ``fast`` = OpenCV's ``switchToSelectiveSearchFast()``: colour spaces HSV and Lab; graph
  segmentations with k in {150, 300, 450} (``base_k = inc_k = 150``, three steps), sigma 0.8 and
  ``min_size = 100`` for every k (OpenCV only sets k and sigma, so min_size stays at the
  ``createGraphSegmentation`` default of 100); strategies Colour+Fill+Texture+Size and
  Fill+Texture+Size (equal weights). 2 x 3 = 6 segmentations.
- ``quality`` = OpenCV's ``switchToSelectiveSearchQuality()`` as intended: colour spaces HSV,
  Lab, intensity I, hue H and rgI (R, G and I channels); k in {150, 300, 450, 600, 750},
  ``min_size = 100``; strategies CFTS, FTS, Fill alone and Size alone. 5 x 5 = 25 segmentations.
  OpenCV itself segments the *blue* channel where it means hue (it splits HSV into a buffer
  that the next ``split`` of the BGR image overwrites). We use the real hue; with the colour
  space ``"blue"`` in place of ``"hue"`` the result equals OpenCV's exactly (tested).
- ``uijlings_fast`` = the paper's "fast" setting, which R-CNN used: colour spaces HSV and Lab,
  k in {50, 100}, ``min_size = k``, sigma 0.8, strategies Colour+Texture+Size+Fill and
  Texture+Size+Fill. k is in OpenCV's units (edge weights are Euclidean distances between
  smoothed 8-bit channel values), which need not match the MATLAB code's scale exactly.

``superpixel_scale`` multiplies the Felzenszwalb k of every graph segmentation, which is what
the design calls the superpixel size: larger k merges more eagerly, so segments grow, and scale
2 about halves the boxes as the paper says (``rcnn bench proposals`` measures it).
``scale_min_size=True`` also multiplies ``min_size`` (small segments are absorbed too), which
removes more than the paper's reduction.
``config.k`` replaces the base k of the recipe; the other k values keep their ratio
to it (fast: k, 2k, 3k), as OpenCV's ``base_k``/``inc_k`` defaults do.

Ranking. OpenCV orders its output by ``rand() * hierarchy_level``, with the C library's
``rand()``: ``cv2.setRNGSeed`` does not reach it and the order differs from call to call. The
*set* of boxes is deterministic, so we rank by a pure function of it. Each (colour space, k)
segmentation runs as its own ``process()`` call; a box's *votes* are the number of segmentations
that produced it (OpenCV deduplicates within one call, so this is the finest count available
without segmenting twice). Boxes are ranked by votes (descending: boxes that many segmentations
agree on first), then area (descending: a stand-in for the paper's preference for regions high
in the grouping hierarchy), then ``(x1, y1, x2, y2)`` ascending. Agreement is rare, so in practice
the order is mostly by area. Scores are ``1 - rank / N``
over the boxes that pass the ``min_side`` filter, so capping with ``max_boxes`` keeps a prefix
and its scores unchanged.

Threads. ``selective_search`` touches no global state. The grouping itself is single-threaded
inside OpenCV; colour conversion, resizing and the segmentation's Gaussian blur may use OpenCV's
thread pool. A process pool over images should call ``configure_opencv_threads(1)`` in each
worker (for example as the pool initialiser) so that n workers do not run n thread pools on the
same cores; the result does not depend on the thread count (tested).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Literal

import cv2
import numpy as np

__all__ = [
    "Mode",
    "SelectiveSearchConfig",
    "Recipe",
    "RECIPES",
    "configure_opencv_threads",
    "selective_search",
    "opencv_selective_search",
    "recipe_boxes",
]

logger = logging.getLogger(__name__)

Mode = Literal["fast", "quality", "uijlings_fast"]
OpenCVMode = Literal["fast", "quality"]

# Strategy names as the recipes spell them -> OpenCV factory names in cv2.ximgproc.segmentation.
_STRATEGY_FACTORIES: dict[str, str] = {
    "colour": "createSelectiveSearchSegmentationStrategyColor",
    "fill": "createSelectiveSearchSegmentationStrategyFill",
    "texture": "createSelectiveSearchSegmentationStrategyTexture",
    "size": "createSelectiveSearchSegmentationStrategySize",
}


def _segmentation_module() -> ModuleType:
    """``cv2.ximgproc.segmentation``, or a RuntimeError that says how to get it."""
    ximgproc = getattr(cv2, "ximgproc", None)
    module = getattr(ximgproc, "segmentation", None)
    if module is None:
        raise RuntimeError(
            "cv2.ximgproc.segmentation is missing: the plain opencv-python(-headless) build has replaced "
            "opencv-contrib-python-headless; reinstall the contrib build with --no-deps (see the Makefile)"
        )
    return module


@dataclass(frozen=True)
class Recipe:
    """One Selective Search diversification recipe, at ``superpixel_scale = 1``.

    Attributes:
        colour_spaces: names from ``COLOUR_SPACES`` ("hsv", "lab", "gray", "hue", "rgi", "blue").
        k_values: Felzenszwalb k of each graph segmentation, the base value first.
        min_size: minimum segment size in pixels; ``None`` means "equal to that segmentation's k".
        strategies: similarity combinations, each a tuple of "colour", "fill", "texture", "size"
            (more than one name = OpenCV's equal-weight ``Multiple`` strategy).
    """

    colour_spaces: tuple[str, ...]
    k_values: tuple[float, ...]
    min_size: int | None
    strategies: tuple[tuple[str, ...], ...]


RECIPES: dict[str, Recipe] = {
    "fast": Recipe(
        colour_spaces=("hsv", "lab"),
        k_values=(150.0, 300.0, 450.0),
        min_size=100,
        strategies=(("colour", "fill", "texture", "size"), ("fill", "texture", "size")),
    ),
    "quality": Recipe(
        colour_spaces=("hsv", "lab", "gray", "hue", "rgi"),
        k_values=(150.0, 300.0, 450.0, 600.0, 750.0),
        min_size=100,
        strategies=(
            ("colour", "fill", "texture", "size"),
            ("fill", "texture", "size"),
            ("fill",),
            ("size",),
        ),
    ),
    "uijlings_fast": Recipe(
        colour_spaces=("hsv", "lab"),
        k_values=(50.0, 100.0),
        min_size=None,
        strategies=(("colour", "texture", "size", "fill"), ("texture", "size", "fill")),
    ),
}


@dataclass(frozen=True)
class SelectiveSearchConfig:
    """Settings of :func:`selective_search`.

    Attributes:
        mode: recipe name, see the module docstring and ``RECIPES``.
        k: base Felzenszwalb k; ``None`` keeps the recipe's (150 for fast and quality, 50 for
            uijlings_fast). The recipe's other k values keep their ratio to the base.
        superpixel_scale: multiplies k of every segmentation; 1 = the recipe as published,
            2 = the GoogLeNet paper's doubled superpixels.
        scale_min_size: whether superpixel_scale also multiplies min_size (off: only k).
        sigma: Gaussian smoothing before graph segmentation (0.8 in OpenCV and in the paper).
        max_side: downscale so that the longer side is at most this before segmenting (500
            roughly matches R-CNN, which resized to width 500); ``None`` segments at full size.
            Boxes always come back in original pixel coordinates.
        min_side: drop boxes whose width or height is below this many original pixels. 10 drops
            the specks that single superpixels leave, which a 224 px warp cannot classify, and
            keeps small objects such as BCCD platelets (about 20-40 px).
        max_boxes: keep at most this many of the best-ranked boxes; ``None`` keeps all.
    """

    mode: Mode = "fast"
    k: float | None = None
    superpixel_scale: float = 1.0
    scale_min_size: bool = False
    sigma: float = 0.8
    max_side: int | None = 500
    min_side: float = 10.0
    max_boxes: int | None = None

    def __post_init__(self) -> None:
        if self.mode not in RECIPES:
            raise ValueError(f"mode must be one of {sorted(RECIPES)}, got {self.mode!r}")
        if self.k is not None and not self.k > 0:
            raise ValueError(f"k must be positive or None, got {self.k}")
        if not self.superpixel_scale > 0:
            raise ValueError(f"superpixel_scale must be positive, got {self.superpixel_scale}")
        if not self.sigma >= 0:
            raise ValueError(f"sigma must be >= 0, got {self.sigma}")
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"max_side must be >= 1 or None, got {self.max_side}")
        if not self.min_side >= 0:
            raise ValueError(f"min_side must be >= 0, got {self.min_side}")
        if self.max_boxes is not None and self.max_boxes < 0:
            raise ValueError(f"max_boxes must be >= 0 or None, got {self.max_boxes}")


def configure_opencv_threads(num_threads: int) -> None:
    """Set OpenCV's thread count for this process (call with 1 in each worker of a process pool).

    ``0`` disables OpenCV's threading optimisations entirely, a negative value restores the
    default. Results of :func:`selective_search` do not depend on it; only the speed does.
    """
    cv2.setNumThreads(int(num_threads))


def _check_image(image: np.ndarray) -> None:
    """Raise ValueError unless ``image`` is a non-empty uint8 ``(H, W, 3)`` array."""
    if not isinstance(image, np.ndarray):
        raise ValueError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must have shape (H, W, 3) (RGB), got {image.shape}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image must not be empty, got shape {image.shape}")
    # Packed int64 keys in _count_boxes hold 16 bits per coordinate.
    if max(image.shape[:2]) >= 1 << 16:
        raise ValueError(f"image sides must be below 65536 pixels, got {image.shape[:2]}")


def _resize_for_segmentation(rgb: np.ndarray, max_side: int | None) -> np.ndarray:
    """Downscale ``(H, W, 3)`` so its longer side is at most ``max_side``; never upscales."""
    height, width = rgb.shape[:2]
    if max_side is None or max(height, width) <= max_side:
        return rgb
    factor = max_side / max(height, width)
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    # INTER_AREA averages the pixels it drops, so fine texture does not alias into edges.
    return cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)


def _colour_space(rgb: np.ndarray, name: str, cache: dict[str, np.ndarray]) -> np.ndarray:
    """One colour space of a uint8 RGB image: ``(H, W, 3)`` or ``(H, W)`` uint8, contiguous.

    Conversions use OpenCV's 8-bit encodings (H in 0..179, L*a*b* scaled to 0..255), exactly as
    OpenCV's own modes do. ``cache`` shares HSV and gray between the spaces that need them.
    """
    if name in cache:
        return cache[name]
    if name == "hsv":
        result = cv2.cvtColor(rgb, cv2.COLOR_RGB2HSV)
    elif name == "lab":
        result = cv2.cvtColor(rgb, cv2.COLOR_RGB2Lab)
    elif name == "gray":
        result = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    elif name == "hue":
        result = np.ascontiguousarray(_colour_space(rgb, "hsv", cache)[:, :, 0])
    elif name == "rgi":
        result = np.dstack([rgb[:, :, 0], rgb[:, :, 1], _colour_space(rgb, "gray", cache)])
    elif name == "blue":
        result = np.ascontiguousarray(rgb[:, :, 2])
    else:
        raise ValueError(f"unknown colour space {name!r}")
    cache[name] = result
    return result


def _strategies(combinations: tuple[tuple[str, ...], ...]) -> list[object]:
    """Fresh OpenCV strategies for one ``process()`` call, primitives shared between combinations.

    Sharing mirrors OpenCV's modes: the colour and texture strategies cache their histograms by
    image id, so the second combination reuses the first one's texture histograms. They must be
    fresh for every call, because each of our calls has image id 0 and a stale cache would
    describe another segmentation's regions.
    """
    segmentation = _segmentation_module()
    primitives = {name: getattr(segmentation, factory)() for name, factory in _STRATEGY_FACTORIES.items()}
    strategies: list[object] = []
    for combination in combinations:
        parts = [primitives[name] for name in combination]
        if len(parts) == 1:
            strategies.append(parts[0])
        else:
            strategies.append(segmentation.createSelectiveSearchSegmentationStrategyMultiple(*parts))
    return strategies


def _scaled_segmentations(recipe: Recipe, config: SelectiveSearchConfig) -> list[tuple[float, int]]:
    """``(k, min_size)`` of each graph segmentation after replacing the base k and scaling."""
    base = recipe.k_values[0]
    k_ratio = (base if config.k is None else config.k) / base
    size_factor = config.superpixel_scale if config.scale_min_size else 1.0
    pairs = []
    for k_value in recipe.k_values:
        # "min_size = k" recipes tie min_size to the k in use, so it follows config.k as well.
        min_size = k_value * k_ratio if recipe.min_size is None else recipe.min_size
        pairs.append((float(k_value * k_ratio * config.superpixel_scale), max(1, round(min_size * size_factor))))
    return pairs


def _segmentation_rects(
    image: np.ndarray, k: float, min_size: int, sigma: float, strategies: tuple[tuple[str, ...], ...]
) -> np.ndarray:
    """OpenCV's deduplicated ``(M, 4)`` int32 ``(x, y, w, h)`` rects of one colour space and one k."""
    segmentation = _segmentation_module()
    search = segmentation.createSelectiveSearchSegmentation()
    search.addImage(image)
    search.addGraphSegmentation(segmentation.createGraphSegmentation(sigma, k, min_size))
    for strategy in _strategies(strategies):
        search.addStrategy(strategy)
    rects = search.process()
    return np.asarray(rects, dtype=np.int32).reshape(-1, 4)


def recipe_boxes(
    rgb: np.ndarray, config: SelectiveSearchConfig, recipe: Recipe | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Distinct Selective Search rects of ``rgb`` at its own size, with their vote counts.

    Args:
        rgb: uint8 ``(H, W, 3)`` RGB image, segmented as it is (``config.max_side`` and the
            box filters are :func:`selective_search`'s business).
        config: k, superpixel_scale, scale_min_size and sigma are used.
        recipe: defaults to ``RECIPES[config.mode]``; pass one to try other diversifications.
    Returns:
        ``rects``: ``(N, 4)`` int64 ``(x, y, w, h)`` sorted by ``(x, y, w, h)``; ``votes``:
        ``(N,)`` int64, how many (colour space, k) segmentations produced each rect.
    """
    _check_image(rgb)
    recipe = RECIPES[config.mode] if recipe is None else recipe
    rgb = np.ascontiguousarray(rgb)
    cache: dict[str, np.ndarray] = {}
    parts = [
        _segmentation_rects(_colour_space(rgb, space, cache), seg_k, min_size, config.sigma, recipe.strategies)
        for space in recipe.colour_spaces
        for seg_k, min_size in _scaled_segmentations(recipe, config)
    ]
    return _count_rects(np.concatenate(parts))


def _count_rects(rects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of ``(M, 4)`` non-negative ``(x, y, w, h)`` below 2**16, and their counts.

    Packing a row into one int64 makes this a 1-D ``np.unique``, much cheaper than ``axis=0``.
    Returns ``(N, 4)`` int64 rows sorted by ``(x, y, w, h)`` and ``(N,)`` int64 counts.
    """
    rects = rects.astype(np.int64)
    keys = (rects[:, 0] << 48) | (rects[:, 1] << 32) | (rects[:, 2] << 16) | rects[:, 3]
    unique_keys, counts = np.unique(keys, return_counts=True)
    mask = np.int64(0xFFFF)
    unique = np.stack([(unique_keys >> s) & mask for s in (48, 32, 16, 0)], axis=1)
    return unique, counts.astype(np.int64)


def _to_original_boxes(rects: np.ndarray, small_shape: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """``(N, 4)`` ``(x, y, w, h)`` rects of the segmented image -> float32 original-image boxes.

    Corners are scaled per axis and rounded to whole original pixels, then clipped. The scale is
    >= 1, so distinct rects stay distinct.
    """
    scale_x = shape[1] / small_shape[1]
    scale_y = shape[0] / small_shape[0]
    corners = np.concatenate([rects[:, 0:2], rects[:, 0:2] + rects[:, 2:4]], axis=1).astype(np.float64)
    corners *= np.array([scale_x, scale_y, scale_x, scale_y])
    boxes = np.rint(corners)
    boxes[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0, shape[1])
    boxes[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0, shape[0])
    return boxes.astype(np.float32)


def _rank(boxes: np.ndarray, votes: np.ndarray) -> np.ndarray:
    """Order ``(N,)`` of ``(N, 4)`` boxes: votes desc, area desc, then x1, y1, x2, y2 ascending."""
    area = (boxes[:, 2] - boxes[:, 0]).astype(np.float64) * (boxes[:, 3] - boxes[:, 1])
    # np.lexsort sorts by the last key first.
    return np.lexsort((boxes[:, 3], boxes[:, 2], boxes[:, 1], boxes[:, 0], -area, -votes))


def selective_search(image: np.ndarray, config: SelectiveSearchConfig) -> tuple[np.ndarray, np.ndarray]:
    """Selective Search proposals of one image, deduplicated and deterministically ranked.

    Args:
        image: uint8 RGB ``(H, W, 3)``.
        config: the recipe and its parameters.
    Returns:
        ``boxes``: float32 ``(N, 4)`` ``(x1, y1, x2, y2)`` in original pixels, whole-pixel
        values inside ``[0, W] x [0, H]``, no duplicate rows, best first; ``scores``: float32
        ``(N,)``, ``1 - rank / N'`` (strictly decreasing; ``N'`` counts the boxes before the
        ``max_boxes`` cap). The same image and config give the same arrays in every process.
    """
    _check_image(image)
    started = time.perf_counter()
    small = _resize_for_segmentation(image, config.max_side)
    rects, votes = recipe_boxes(small, config)
    boxes = _to_original_boxes(rects, small.shape[:2], image.shape[:2])
    keep = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= config.min_side
    boxes, votes = boxes[keep], votes[keep]
    order = _rank(boxes, votes)
    scores = (1.0 - np.arange(len(order), dtype=np.float64) / max(len(order), 1)).astype(np.float32)
    if config.max_boxes is not None:
        order, scores = order[: config.max_boxes], scores[: config.max_boxes]
    logger.debug(
        "selective search %s: %d boxes (%d before min_side) on %dx%d in %.3f s",
        config.mode, len(order), len(keep), small.shape[1], small.shape[0], time.perf_counter() - started,
    )
    return np.ascontiguousarray(boxes[order]), scores


def opencv_selective_search(image: np.ndarray, mode: OpenCVMode = "fast") -> np.ndarray:
    """OpenCV's own ``switchToSelectiveSearchFast/Quality()`` on an RGB image, unmodified.

    No resizing, filtering or ranking: the baseline our wrapper is compared with.

    Args:
        image: uint8 RGB ``(H, W, 3)``.
        mode: "fast" or "quality".
    Returns:
        float32 ``(N, 4)`` ``(x1, y1, x2, y2)`` boxes in OpenCV's (randomised) order.
    """
    _check_image(image)
    if mode not in ("fast", "quality"):
        raise ValueError(f"mode must be 'fast' or 'quality', got {mode!r}")
    search = _segmentation_module().createSelectiveSearchSegmentation()
    search.setBaseImage(cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR))
    if mode == "fast":
        search.switchToSelectiveSearchFast()
    else:
        search.switchToSelectiveSearchQuality()
    rects = np.asarray(search.process(), dtype=np.float32).reshape(-1, 4)
    rects[:, 2:4] += rects[:, 0:2]
    return rects
