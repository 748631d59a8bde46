"""The built-in generated detection dataset, spec ``synthetic[:N[:SEED]]``.

Every image shows 1-12 textured shapes from :data:`SYNTHETIC_CLASSES` pasted over a random crop
of one of the two photographs that ship with scikit-learn (``china.jpg``, ``flower.jpg``), so it
runs anywhere without downloads, yet is a real (small) detection problem:

- each class has a characteristic outline (with small per-instance variation) and a
  characteristic appearance: two base hues and three fill-pattern families out of five (solid,
  stripes, checker, dots, gradient). Every hue is shared by two classes of dissimilar outline and
  pattern families overlap, so neither colour nor outline alone names the class;
- sizes are log-uniform from 16 px to 0.8 of the shorter image side; objects may be rotated,
  cut by the image border (at most a quarter of their extent per side) and occluded by objects
  drawn later;
- light global blur and noise keep the pixels from being trivially clean.

Ground truth is exact: the box of an object is the tight box of its *visible* pixels (after
occlusion and the image border), integer-aligned in the project's continuous convention
(``x1`` = first pixel column, ``x2`` = last pixel column + 1), so a VOC round trip is lossless.
An object with less than :data:`DIFFICULT_VISIBLE_FRACTION` of its area visible is ``difficult``;
the generator refuses placements that would leave an earlier object less than
:data:`MIN_KEEP_FRACTION` visible, and an object whose visible box is under
:data:`MIN_BOX_SIDE` px on a side is left out of the ground truth.

Image ``i`` of seed ``s`` depends only on ``(s, i)`` (a numpy ``SeedSequence([s, i])``), never on
``N``: records are built from the cheap layout pass alone, and the loader re-renders any single
image on demand. Generation happens in two passes so that building records does not paint pixels:

1. *layout* (:func:`_layout`): image size, shapes, masks, positions and the per-pixel owner map,
   from which visible boxes and fractions follow;
2. *paint* (:func:`synthetic_scene`): background, textures, blur and noise, from a second random
   stream spawned from the same seed sequence.
"""

from __future__ import annotations

import colorsys
import functools
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

import cv2
import numpy as np

from detection.data.records import Dataset, ImageRecord

__all__ = [
    "SYNTHETIC_CLASSES",
    "DIFFICULT_VISIBLE_FRACTION",
    "MIN_KEEP_FRACTION",
    "MIN_BOX_SIDE",
    "SyntheticScene",
    "parse_synthetic_spec",
    "synthetic_dataset",
    "synthetic_scene",
    "render_synthetic_image",
    "synthetic_image_id",
    "clear_synthetic_caches",
]

logger = logging.getLogger(__name__)

SYNTHETIC_CLASSES: list[str] = [
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "cross",
    "hexagon",
    "crescent",
    "heart",
    "arrow",
    "ellipse",
    "frame",
]

DIFFICULT_VISIBLE_FRACTION = 0.3
MIN_KEEP_FRACTION = 0.15
MIN_BOX_SIDE = 4

MIN_OBJECT_SIZE = 16.0
MAX_OBJECT_SIZE_FRACTION = 0.8
IMAGE_SIDE_RANGE = (300, 500)
MAX_OBJECTS = 12
# Fraction of an object's extent (per side) that may fall outside the image.
MAX_TRUNCATION = 0.25
PLACEMENT_TRIES = 10

# Twelve hues 30 degrees apart, as indices 0..11. Each class owns two; each hue is shared by
# exactly two classes whose outlines differ, so colour narrows the class down without naming it.
_CLASS_HUES: dict[str, tuple[int, int]] = {
    "circle": (0, 7),
    "square": (0, 5),
    "triangle": (1, 8),
    "star": (1, 9),
    "ring": (2, 8),
    "cross": (2, 11),
    "hexagon": (3, 10),
    "crescent": (3, 6),
    "heart": (4, 11),
    "arrow": (4, 6),
    "ellipse": (5, 9),
    "frame": (7, 10),
}

PATTERNS = ("solid", "stripes", "checker", "dots", "gradient")
_CLASS_PATTERNS: dict[str, tuple[str, str, str]] = {
    "circle": ("solid", "stripes", "dots"),
    "square": ("checker", "gradient", "dots"),
    "triangle": ("solid", "checker", "gradient"),
    "star": ("stripes", "dots", "gradient"),
    "ring": ("solid", "checker", "stripes"),
    "cross": ("gradient", "dots", "solid"),
    "hexagon": ("stripes", "checker", "solid"),
    "crescent": ("dots", "gradient", "checker"),
    "heart": ("solid", "stripes", "gradient"),
    "arrow": ("checker", "dots", "stripes"),
    "ellipse": ("gradient", "solid", "checker"),
    "frame": ("dots", "stripes", "gradient"),
}

_IMAGE_ID = re.compile(r"^syn(\d+)_(\d+)$")

Polygon = np.ndarray  # (K, 2) float64 vertices (x, y) in unit coordinates
ShapeParts = list[tuple[Polygon, int]]  # polygons filled in order with value 1 (body) or 0 (hole)


# --------------------------------------------------------------------------------------------
# Outlines: each returns polygons in unit coordinates (about [-1, 1]^2, y pointing down) and the
# largest rotation in degrees that still looks like the class.
# --------------------------------------------------------------------------------------------


def _regular_polygon(sides: int, radius: float = 1.0, start_deg: float = -90.0) -> Polygon:
    """Vertices ``(sides, 2)`` of a regular polygon centred on the origin."""
    angles = np.deg2rad(start_deg) + 2.0 * np.pi * np.arange(sides) / sides
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)


def _ellipse_polygon(rx: float, ry: float, cx: float = 0.0, points: int = 64) -> Polygon:
    """Vertices ``(points, 2)`` approximating an axis-aligned ellipse centred on ``(cx, 0)``."""
    angles = 2.0 * np.pi * np.arange(points) / points
    return np.stack([cx + rx * np.cos(angles), ry * np.sin(angles)], axis=1)


def _shape_circle(rng: np.random.Generator) -> tuple[ShapeParts, float]:
    return [(_ellipse_polygon(1.0, 1.0), 1)], 180.0


def _shape_square(rng: np.random.Generator) -> tuple[ShapeParts, float]:
    return [(_regular_polygon(4, math.sqrt(2.0), -45.0), 1)], 45.0


def _shape_triangle(rng: np.random.Generator) -> tuple[ShapeParts, float]:
    return [(_regular_polygon(3), 1)], 180.0


def _shape_star(rng: np.random.Generator) -> tuple[ShapeParts, float]:
    radii = np.where(np.arange(10) % 2 == 0, 1.0, rng.uniform(0.38, 0.5))
    angles = np.deg2rad(-90.0) + np.pi * np.arange(10) / 5.0
    return [(np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1), 1)], 180.0


def _shape_ring(rng: np.random.Generator) -> tuple[ShapeParts, float]:
    inner = rng.uniform(0.5, 0.65)
    return [(_ellipse_polygon(1.0, 1.0), 1), (_ellipse_polygon(inner, inner), 0)], 180.0


def _shape_cross(rng: np.random.Generator) -> tuple[ShapeParts, float]:
    a = rng.uniform(0.3, 0.4)
    corners = [(-a, -1), (a, -1), (a, -a), (1, -a), (1, a), (a, a), (a, 1), (-a, 1), (-a, a), (-1, a), (-1, -a), (-a, -a)]
    return [(np.asarray(corners, dtype=np.float64), 1)], 45.0


def _shape_hexagon(rng: np.random.Generator) -> tuple[ShapeParts, float]:
    return [(_regular_polygon(6), 1)], 30.0


def _shape_crescent(rng: np.random.Generator) -> tuple[ShapeParts, float]:
    # The bite circle pokes out of the right side (offset + radius > 1) but leaves a thick body
    # on the left (offset - radius > -1), so the result is one connected crescent.
    bite_radius = rng.uniform(0.8, 0.9)
    bite_offset = rng.uniform(0.35, 0.5)
    return [(_ellipse_polygon(1.0, 1.0), 1), (_ellipse_polygon(bite_radius, bite_radius, bite_offset), 0)], 180.0


def _shape_heart(rng: np.random.Generator) -> tuple[ShapeParts, float]:
    t = 2.0 * np.pi * np.arange(96) / 96
    x = 16.0 * np.sin(t) ** 3
    y = -(13.0 * np.cos(t) - 5.0 * np.cos(2 * t) - 2.0 * np.cos(3 * t) - np.cos(4 * t))
    return [(np.stack([x, y], axis=1) / 17.0, 1)], 30.0


def _shape_arrow(rng: np.random.Generator) -> tuple[ShapeParts, float]:
    shaft = rng.uniform(0.2, 0.28)
    head = rng.uniform(0.5, 0.6)
    neck = rng.uniform(0.05, 0.25)
    corners = [(-1, -shaft), (neck, -shaft), (neck, -head), (1, 0), (neck, head), (neck, shaft), (-1, shaft)]
    return [(np.asarray(corners, dtype=np.float64), 1)], 180.0


def _shape_ellipse(rng: np.random.Generator) -> tuple[ShapeParts, float]:
    return [(_ellipse_polygon(1.0, rng.uniform(0.42, 0.62)), 1)], 90.0


def _shape_frame(rng: np.random.Generator) -> tuple[ShapeParts, float]:
    inner = rng.uniform(0.5, 0.65) * math.sqrt(2.0)
    return [(_regular_polygon(4, math.sqrt(2.0), -45.0), 1), (_regular_polygon(4, inner, -45.0), 0)], 45.0


_SHAPES: dict[str, Callable[[np.random.Generator], tuple[ShapeParts, float]]] = {
    "circle": _shape_circle,
    "square": _shape_square,
    "triangle": _shape_triangle,
    "star": _shape_star,
    "ring": _shape_ring,
    "cross": _shape_cross,
    "hexagon": _shape_hexagon,
    "crescent": _shape_crescent,
    "heart": _shape_heart,
    "arrow": _shape_arrow,
    "ellipse": _shape_ellipse,
    "frame": _shape_frame,
}


def _rasterise(parts: ShapeParts, size: float, angle_deg: float, subpixel: np.ndarray) -> np.ndarray:
    """Fill a rotated outline whose longer box side is ``size`` px into a tight ``(h, w)`` bool mask.

    The mask has a one-pixel margin on each side; ``subpixel`` ``(2,)`` in ``[0, 1)`` shifts the
    outline so that equal shapes do not always land on the same pixel grid.
    """
    theta = np.deg2rad(angle_deg)
    rotation = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
    rotated = [(poly @ rotation.T, value) for poly, value in parts]
    body = np.concatenate([poly for poly, value in rotated if value == 1])
    low, high = body.min(axis=0), body.max(axis=0)
    scale = size / float(np.max(high - low))
    origin = low * scale - 1.0 - subpixel
    width, height = (np.ceil(high * scale - origin) + 1.0).astype(int)
    mask = np.zeros((height, width), dtype=np.uint8)
    for poly, value in rotated:
        # Four fractional bits: cv2.fillPoly takes fixed-point vertices with `shift`.
        points = np.round((poly * scale - origin) * 16.0).astype(np.int32)
        cv2.fillPoly(mask, [points], int(value), lineType=cv2.LINE_8, shift=4)
    return mask.astype(bool)


# --------------------------------------------------------------------------------------------
# Layout pass: where everything goes, and what stays visible.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _PlacedObject:
    """One drawn object: its class, its full (unclipped) mask and where the mask's corner lies."""

    label: int
    mask: np.ndarray  # (h, w) bool
    x0: int
    y0: int
    full_area: int


@dataclass(frozen=True)
class _Layout:
    """Geometry of one image; ``owner`` ``(H, W)`` int16 holds the index into ``objects`` of the
    object seen at each pixel (-1: background). ``gt_objects`` ``(N,)`` indexes the objects that
    are ground truth; ``boxes (N, 4)``, ``labels (N,)``, ``difficult (N,)`` and
    ``visible_fraction (N,)`` describe them."""

    height: int
    width: int
    objects: tuple[_PlacedObject, ...]
    owner: np.ndarray
    gt_objects: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    visible_fraction: np.ndarray


def _streams(seed: int, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """The layout and paint random streams of image ``index``: a function of ``(seed, index)`` only."""
    if seed < 0 or index < 0:
        raise ValueError(f"synthetic seed and image index must be >= 0, got seed={seed}, index={index}")
    layout_seq, paint_seq = np.random.SeedSequence([seed, index]).spawn(2)
    return np.random.default_rng(layout_seq), np.random.default_rng(paint_seq)


def _clip_window(obj: _PlacedObject, x0: int, y0: int, width: int, height: int) -> tuple[slice, slice, slice, slice]:
    """Image and mask slices ``(img_rows, img_cols, mask_rows, mask_cols)`` of the in-frame part."""
    h, w = obj.mask.shape
    ix0, iy0 = max(x0, 0), max(y0, 0)
    ix1, iy1 = min(x0 + w, width), min(y0 + h, height)
    return slice(iy0, iy1), slice(ix0, ix1), slice(iy0 - y0, iy1 - y0), slice(ix0 - x0, ix1 - x0)


def _try_place(
    obj: _PlacedObject, owner: np.ndarray, visible: list[int], full: list[int], rng: np.random.Generator
) -> _PlacedObject | None:
    """Find a position where ``obj`` leaves every earlier object at least MIN_KEEP_FRACTION visible.

    On success, paints ``obj`` into ``owner`` (in place), updates ``visible`` and returns the
    object at its position; returns None after PLACEMENT_TRIES failed positions.
    """
    height, width = owner.shape
    h, w = obj.mask.shape
    index = len(visible)
    for _ in range(PLACEMENT_TRIES):
        x0 = int(rng.integers(-int(MAX_TRUNCATION * w), width - int((1.0 - MAX_TRUNCATION) * w) + 1))
        y0 = int(rng.integers(-int(MAX_TRUNCATION * h), height - int((1.0 - MAX_TRUNCATION) * h) + 1))
        rows, cols, mrows, mcols = _clip_window(obj, x0, y0, width, height)
        inside = obj.mask[mrows, mcols]
        window = owner[rows, cols]
        covered = window[inside]
        lost = np.bincount(covered[covered >= 0], minlength=index)
        remaining = np.asarray(visible, dtype=np.int64) - lost
        if np.all(remaining >= MIN_KEEP_FRACTION * np.asarray(full, dtype=np.float64)):
            window[inside] = index
            for k in np.flatnonzero(lost):
                visible[k] -= int(lost[k])
            visible.append(int(inside.sum()))
            full.append(obj.full_area)
            return _PlacedObject(obj.label, obj.mask, x0, y0, obj.full_area)
    return None


def _visible_box(owner: np.ndarray, obj: _PlacedObject, index: int) -> tuple[int, int, int, int] | None:
    """Tight integer box ``(x1, y1, x2, y2)`` (x2, y2 exclusive) of the pixels ``index`` owns."""
    height, width = owner.shape
    rows, cols, _, _ = _clip_window(obj, obj.x0, obj.y0, width, height)
    seen = owner[rows, cols] == index
    row_hits = np.flatnonzero(seen.any(axis=1))
    col_hits = np.flatnonzero(seen.any(axis=0))
    if len(row_hits) == 0:
        return None
    return (
        cols.start + int(col_hits[0]),
        rows.start + int(row_hits[0]),
        cols.start + int(col_hits[-1]) + 1,
        rows.start + int(row_hits[-1]) + 1,
    )


@functools.lru_cache(maxsize=8)
def _layout(seed: int, index: int) -> _Layout:
    """The geometry of image ``index``: size, objects in drawing order, owner map, ground truth."""
    rng, _ = _streams(seed, index)
    height, width = (int(v) for v in rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1, size=2))
    count = int(rng.integers(1, MAX_OBJECTS + 1))
    labels = rng.integers(0, len(SYNTHETIC_CLASSES), size=count)
    max_size = MAX_OBJECT_SIZE_FRACTION * min(height, width)
    sizes = np.exp(rng.uniform(np.log(MIN_OBJECT_SIZE), np.log(max_size), size=count))
    # Mostly large objects first, so that small ones are seldom buried; the jitter still lets
    # some large objects land on top of smaller ones.
    order = np.argsort(-(np.log(sizes) + rng.normal(0.0, 0.6, size=count)), kind="stable")

    owner = np.full((height, width), -1, dtype=np.int16)
    visible: list[int] = []
    full: list[int] = []
    objects: list[_PlacedObject] = []
    for k in order:
        parts, max_angle = _SHAPES[SYNTHETIC_CLASSES[int(labels[k])]](rng)
        angle = float(rng.uniform(-max_angle, max_angle))
        mask = _rasterise(parts, float(sizes[k]), angle, rng.uniform(0.0, 1.0, size=2))
        candidate = _PlacedObject(int(labels[k]), mask, 0, 0, int(mask.sum()))
        placed = _try_place(candidate, owner, visible, full, rng)
        if placed is not None:
            objects.append(placed)

    gt_objects, boxes, fractions = [], [], []
    for k, obj in enumerate(objects):
        box = _visible_box(owner, obj, k)
        if box is None or min(box[2] - box[0], box[3] - box[1]) < MIN_BOX_SIDE:
            continue
        gt_objects.append(k)
        boxes.append(box)
        fractions.append(visible[k] / obj.full_area)
    fraction_array = np.asarray(fractions, dtype=np.float32)
    layout = _Layout(
        height=height,
        width=width,
        objects=tuple(objects),
        owner=owner,
        gt_objects=np.asarray(gt_objects, dtype=np.int64),
        boxes=np.asarray(boxes, dtype=np.float32).reshape(-1, 4),
        labels=np.asarray([objects[k].label for k in gt_objects], dtype=np.int64),
        difficult=fraction_array < DIFFICULT_VISIBLE_FRACTION,
        visible_fraction=fraction_array,
    )
    # The layout is shared through the cache: a caller editing it in place would corrupt every
    # later record and image of this (seed, index).
    for array in (layout.owner, layout.gt_objects, layout.boxes, layout.labels, layout.difficult, layout.visible_fraction):
        array.setflags(write=False)
    for obj in objects:
        obj.mask.setflags(write=False)
    return layout


# --------------------------------------------------------------------------------------------
# Paint pass: background photo, textures, global degradations.
# --------------------------------------------------------------------------------------------


@functools.cache
def _photo(name: str) -> np.ndarray:
    """One of scikit-learn's sample photos, ``(427, 640, 3)`` uint8 RGB, loaded once per process."""
    from sklearn.datasets import load_sample_image  # scikit-learn loads slowly; only the photo textures need it

    photo = np.ascontiguousarray(load_sample_image(name))
    photo.setflags(write=False)
    return photo


def _background(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A random crop of a sample photo, resized to ``(height, width)``, mirrored and recoloured.

    Returns a float32 ``(height, width, 3)`` RGB array, roughly in [0, 255].
    """
    photo = _photo(("china.jpg", "flower.jpg")[int(rng.integers(2))])
    ph, pw = photo.shape[:2]
    # Largest crop of the target aspect ratio, then a random fraction of it: zooming in changes
    # the scale of the background texture relative to the objects.
    scale = min(ph / height, pw / width) * rng.uniform(0.35, 1.0)
    ch, cw = max(int(height * scale), 8), max(int(width * scale), 8)
    y0, x0 = int(rng.integers(0, ph - ch + 1)), int(rng.integers(0, pw - cw + 1))
    crop = photo[y0 : y0 + ch, x0 : x0 + cw]
    # Mirror only left-right: an upside-down sky would look like nothing a detector meets.
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    crop = cv2.resize(np.ascontiguousarray(crop), (width, height), interpolation=cv2.INTER_LINEAR)
    # Saturation, per-channel gain, brightness and offset folded into one 3x4 colour matrix,
    # applied in a single cv2.transform pass.
    saturation = rng.uniform(0.5, 1.2)
    mix = saturation * np.eye(3) + (1.0 - saturation) / 3.0 * np.ones((3, 3))
    gains = rng.uniform(0.85, 1.15, size=3) * rng.uniform(0.7, 1.1)
    matrix = np.concatenate([gains[:, None] * mix, np.full((3, 1), rng.uniform(-15.0, 15.0))], axis=1)
    return cv2.transform(crop.astype(np.float32), matrix.astype(np.float32))


def _hsv_colour(hue_index: int, rng: np.random.Generator) -> np.ndarray:
    """A saturated RGB colour ``(3,)`` float32 in [0, 255] near hue ``30 * hue_index`` degrees."""
    hue = (30.0 * hue_index + rng.uniform(-12.0, 12.0)) / 360.0 % 1.0
    rgb = colorsys.hsv_to_rgb(hue, rng.uniform(0.55, 1.0), rng.uniform(0.55, 1.0))
    return np.asarray(rgb, dtype=np.float32) * 255.0


def _pattern_weights(pattern: str, u: np.ndarray, v: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    """Mixing weights ``(K,)`` float32 in [0, 1] between an object's two colours.

    ``u``, ``v``: ``(K,)`` pixel coordinates in the pattern's rotated frame, centred on the object.
    """
    period = max(size * rng.uniform(0.12, 0.3), 4.0)
    if pattern == "solid":
        return np.zeros_like(u)
    if pattern == "stripes":
        return (np.mod(u / period, 1.0) < rng.uniform(0.35, 0.65)).astype(np.float32)
    if pattern == "checker":
        return np.mod(np.floor(u / period) + np.floor(v / period), 2.0)
    if pattern == "dots":
        du = u - period * np.round(u / period)
        dv = v - period * np.round(v / period)
        radius = period * rng.uniform(0.22, 0.34)
        return (du * du + dv * dv < radius * radius).astype(np.float32)
    if pattern == "gradient":
        return np.clip(0.5 + u / size, 0.0, 1.0)
    raise ValueError(f"unknown pattern {pattern!r}")


def _texture(label: int, mask_shape: tuple[int, int], ys: np.ndarray, xs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Colours ``(K, 3)`` float32 RGB of one object at its mask pixels ``(ys, xs)`` (each ``(K,)``).

    Patterns live in the frame of the whole mask, so a truncated object shows the part of the
    pattern it would show uncut.
    """
    name = SYNTHETIC_CLASSES[label]
    hues = _CLASS_HUES[name]
    first = int(rng.integers(2))
    colour_a = _hsv_colour(hues[first], rng)
    if rng.random() < 0.5:
        # Same hue, different lightness: a tone-on-tone pattern.
        colour_b = np.clip(colour_a * rng.uniform(0.4, 0.65) + rng.uniform(0.0, 40.0), 0.0, 255.0)
    else:
        colour_b = _hsv_colour(hues[1 - first], rng)
    pattern = _CLASS_PATTERNS[name][int(rng.integers(3))]
    h, w = mask_shape
    size = float(max(h, w))
    y = ys.astype(np.float32) - h / 2.0
    x = xs.astype(np.float32) - w / 2.0
    theta = rng.uniform(0.0, np.pi)
    u = x * np.float32(np.cos(theta)) + y * np.float32(np.sin(theta))
    v = y * np.float32(np.cos(theta)) - x * np.float32(np.sin(theta))
    weights = _pattern_weights(pattern, u, v, size, rng)
    # A linear shading ramp, as if lit from one side, plus fine grain.
    phi = rng.uniform(0.0, 2.0 * np.pi)
    shade = 1.0 + np.float32(rng.uniform(0.0, 0.5) / size) * (x * np.float32(np.cos(phi)) + y * np.float32(np.sin(phi)))
    grain = rng.standard_normal(len(ys), dtype=np.float32) * np.float32(rng.uniform(0.0, 8.0))
    fill = colour_a + weights[:, None] * (colour_b - colour_a)
    return fill * shade[:, None] + grain[:, None]


@functools.cache
def _noise_tile() -> np.ndarray:
    """A fixed ``(2 * max_side, 2 * max_side, 3)`` float32 tile of unit Gaussian noise.

    Images take a random window of it: drawing fresh noise for every pixel would cost more than
    the rest of the paint pass, and sensor noise needs no more variety than this.
    """
    side = 2 * IMAGE_SIDE_RANGE[1]
    tile = np.random.default_rng(20140917).standard_normal((side, side, 3), dtype=np.float32)
    tile.setflags(write=False)
    return tile


def _degrade(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Light global blur and sensor noise on a float32 ``(H, W, 3)`` image; returns uint8."""
    height, width = image.shape[:2]
    if rng.random() < 0.5:
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=rng.uniform(0.4, 1.1))
    tile = _noise_tile()
    y0 = int(rng.integers(0, tile.shape[0] - height + 1))
    x0 = int(rng.integers(0, tile.shape[1] - width + 1))
    # 0.5 turns the truncating cast below into rounding.
    image = cv2.scaleAdd(tile[y0 : y0 + height, x0 : x0 + width], rng.uniform(0.0, 6.0), image) + np.float32(0.5)
    return np.clip(image, 0.0, 255.0, out=image).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Public API.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SyntheticScene:
    """One rendered image with its ground truth and the masks behind it (N ground-truth objects).

    Attributes:
        image: ``(H, W, 3)`` uint8 RGB, read-only (it is shared through a cache).
        boxes: ``(N, 4)`` float32 tight boxes of the visible pixels, integer-valued.
        labels: ``(N,)`` int64 indices into :data:`SYNTHETIC_CLASSES`.
        difficult: ``(N,)`` bool, visible fraction below :data:`DIFFICULT_VISIBLE_FRACTION`.
        visible_fraction: ``(N,)`` float32, visible pixels / full shape area (occlusion and
            the image border both count).
        owner: ``(H, W)`` int16, at each pixel the index of the ground-truth object seen there;
            -1 for the background, -2 for a drawn object that is not ground truth.
    """

    image: np.ndarray
    boxes: np.ndarray
    labels: np.ndarray
    difficult: np.ndarray
    visible_fraction: np.ndarray
    owner: np.ndarray


@functools.lru_cache(maxsize=16)
def synthetic_scene(seed: int, index: int) -> SyntheticScene:
    """Render image ``index`` of seed ``seed`` (cached; the arrays returned are read-only)."""
    layout = _layout(seed, index)
    _, rng = _streams(seed, index)
    image = _background(layout.height, layout.width, rng)
    for obj in layout.objects:
        rows, cols, mrows, mcols = _clip_window(obj, obj.x0, obj.y0, layout.width, layout.height)
        inside = obj.mask[mrows, mcols]
        ys, xs = np.nonzero(inside)
        image[rows, cols][inside] = _texture(obj.label, obj.mask.shape, ys + mrows.start, xs + mcols.start, rng)
    pixels = np.ascontiguousarray(_degrade(image, rng))

    # Object index -> ground-truth index (-2 for drawn objects left out of the ground truth).
    lookup = np.full(len(layout.objects) + 1, -2, dtype=np.int16)
    lookup[-1] = -1
    lookup[layout.gt_objects] = np.arange(len(layout.gt_objects), dtype=np.int16)
    owner = lookup[layout.owner]
    for array in (pixels, owner):
        array.setflags(write=False)
    return SyntheticScene(
        image=pixels,
        boxes=layout.boxes,
        labels=layout.labels,
        difficult=layout.difficult,
        visible_fraction=layout.visible_fraction,
        owner=owner,
    )


def render_synthetic_image(seed: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Image ``index`` of seed ``seed`` and its ground truth.

    Returns:
        ``image (H, W, 3)`` uint8 RGB (a fresh, writable, C-contiguous copy), ``boxes (N, 4)``
        float32, ``labels (N,)`` int64, ``difficult (N,)`` bool.
    """
    scene = synthetic_scene(seed, index)
    return scene.image.copy(), scene.boxes.copy(), scene.labels.copy(), scene.difficult.copy()


def clear_synthetic_caches() -> None:
    """Forget cached layouts and images (tests use it to prove images are regenerated exactly)."""
    _layout.cache_clear()
    synthetic_scene.cache_clear()


def synthetic_image_id(seed: int, index: int) -> str:
    """The image id of image ``index`` of seed ``seed``, e.g. ``syn0_00042``."""
    return f"syn{seed}_{index:05d}"


def parse_synthetic_spec(spec: str) -> tuple[int, int]:
    """``"synthetic[:N[:SEED]]"`` -> ``(N, SEED)``; N defaults to 200 and SEED to 0."""
    parts = spec.split(":")
    if parts[0] != "synthetic" or len(parts) > 3:
        raise ValueError(f"not a synthetic dataset spec (synthetic[:N[:SEED]]): {spec!r}")
    try:
        values = [int(p) for p in parts[1:]]
    except ValueError as error:
        raise ValueError(f"synthetic spec needs integer N and SEED: {spec!r}") from error
    num_images, seed = (values + [200, 0][len(values) :])[:2]
    if num_images < 0 or seed < 0:
        raise ValueError(f"synthetic N and SEED must be >= 0: {spec!r}")
    return num_images, seed


def _load_image(record: ImageRecord) -> np.ndarray:
    """The image loader of synthetic datasets: re-renders the image its id names."""
    match = _IMAGE_ID.match(record.image_id)
    if match is None:
        raise ValueError(f"not a synthetic image id: {record.image_id!r}")
    image, _, _, _ = render_synthetic_image(int(match.group(1)), int(match.group(2)))
    if image.shape[:2] != (record.height, record.width):
        raise ValueError(f"{record.image_id}: rendered {image.shape[1]}x{image.shape[0]}, record says {record.width}x{record.height}")
    return image


def synthetic_dataset(num_images: int = 200, seed: int = 0, spec: str | None = None) -> Dataset:
    """The built-in dataset: ``num_images`` generated images of seed ``seed``.

    ``spec`` (``"synthetic[:N[:SEED]]"``), when given, overrides both numbers. Only the layout
    pass runs here (a few milliseconds per image); pixels are rendered when an image is loaded.
    """
    if spec is not None:
        num_images, seed = parse_synthetic_spec(spec)
    if num_images < 0 or seed < 0:
        raise ValueError(f"synthetic num_images and seed must be >= 0, got {num_images}, {seed}")
    start = time.perf_counter()
    records = []
    for index in range(num_images):
        layout = _layout(seed, index)
        records.append(
            ImageRecord(
                image_id=synthetic_image_id(seed, index),
                path=None,
                width=layout.width,
                height=layout.height,
                boxes=layout.boxes.copy(),
                labels=layout.labels.copy(),
                difficult=layout.difficult.copy(),
            )
        )
    logger.debug("synthetic:%d:%d laid out in %.2f s", num_images, seed, time.perf_counter() - start)
    return Dataset(spec=f"synthetic:{num_images}:{seed}", classes=list(SYNTHETIC_CLASSES), records=records, image_loader=_load_image)
