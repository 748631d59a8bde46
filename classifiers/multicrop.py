"""The paper's test-time crop schemes (section 7) as boxes, cut on the device in one call.

Every crop of these schemes is an axis-aligned rectangle of the (resized) image, resized to
``S x S``. So each scheme is written as a list of boxes in the original image's pixels plus a
mirror flag, and :func:`classifiers.crops.warp_crops` (no context padding) cuts all crops of a
batch of images in one ``roi_align`` call on the device.

With ``S = 224`` (sizes scale with ``S / 224``):

- ``1``: shorter side resized to 256, the centre 224 x 224 crop.
- ``10``: shorter side 256; the 4 corner crops and the centre crop of the resized image; each
  also mirrored.
- ``144``: shorter side resized to 256, 288, 320 and 352; the left, centre and right squares of
  each (top, centre, bottom for portrait images); from each square the 4 corner and the centre
  224 crops and the whole square resized to 224; each mirrored: 4 x 3 x 6 x 2 = 144.

Shapes: boxes ``(K, 4)`` float32, flips ``(K,)`` bool, with ``K`` = the scheme's crop count.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from classifiers.crops import flip_crops, warp_crops

__all__ = ["SCHEMES", "scheme_boxes", "multicrop_batch"]

SCHEMES = (1, 10, 144)
SCALES_144 = (256, 288, 320, 352)
BASE_SIDE = 256


def _corner_and_centre(x0: float, y0: float, width: float, height: float, crop: float) -> list[tuple[float, float]]:
    """Top-left corners of the 4 corner crops and the centre crop of side ``crop`` in a region."""
    right, bottom = x0 + width - crop, y0 + height - crop
    return [(x0, y0), (right, y0), (x0, bottom), (right, bottom), (x0 + (width - crop) / 2, y0 + (height - crop) / 2)]


def scheme_boxes(width: int, height: int, scheme: int, size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (in the image's pixels) and mirror flags of one image's crops under ``scheme``."""
    if scheme not in SCHEMES:
        raise ValueError(f"crop scheme must be one of {SCHEMES}, got {scheme}")
    unit = size / 224.0
    crop = float(size)
    boxes: list[tuple[float, float, float, float]] = []

    def add(factor: float, x: float, y: float, side_w: float, side_h: float) -> None:
        # (x, y, side) are in the resized image; divide by the resize factor for original pixels.
        boxes.append((x / factor, y / factor, (x + side_w) / factor, (y + side_h) / factor))

    if scheme in (1, 10):
        factor = BASE_SIDE * unit / min(width, height)
        resized_w, resized_h = width * factor, height * factor
        corners = _corner_and_centre(0.0, 0.0, resized_w, resized_h, crop)
        for x, y in corners[-1:] if scheme == 1 else corners:
            add(factor, x, y, crop, crop)
    else:
        for side in SCALES_144:
            factor = side * unit / min(width, height)
            resized_w, resized_h = width * factor, height * factor
            square = min(resized_w, resized_h)
            if resized_w >= resized_h:
                squares = [(0.0, 0.0), ((resized_w - square) / 2, 0.0), (resized_w - square, 0.0)]
            else:
                squares = [(0.0, 0.0), (0.0, (resized_h - square) / 2), (0.0, resized_h - square)]
            for sx, sy in squares:
                for x, y in _corner_and_centre(sx, sy, square, square, crop):
                    add(factor, x, y, crop, crop)
                add(factor, sx, sy, square, square)
    unflipped = np.array(boxes, dtype=np.float32)
    if scheme == 1:
        return unflipped, np.zeros(1, dtype=bool)
    return np.concatenate([unflipped, unflipped]), np.repeat([False, True], len(unflipped))


def multicrop_batch(
    images: Sequence[np.ndarray],
    regions: Sequence[np.ndarray],
    scheme: int,
    size: int = 224,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """All crops of ``scheme`` for each (image, region) pair: ``(N * K, 3, S, S)``, pair-major.

    ``regions[i]`` ``(4,)`` is the part of ``images[i]`` treated as the picture to classify (the
    whole image for image classification, an object's box for object crops).
    """
    all_boxes, all_flips = [], []
    for region in regions:
        x1, y1, x2, y2 = (float(v) for v in region)
        boxes, flips = scheme_boxes(max(1, round(x2 - x1)), max(1, round(y2 - y1)), scheme, size)
        scale = np.array([(x2 - x1) / max(1, round(x2 - x1)), (y2 - y1) / max(1, round(y2 - y1))] * 2, np.float32)
        all_boxes.append(boxes * scale + np.array([x1, y1, x1, y1], np.float32))
        all_flips.append(flips)
    crops = warp_crops(list(images), all_boxes, size=size, padding=0, device=device, sampling_ratio=0)
    flips = torch.from_numpy(np.concatenate(all_flips)).to(crops.device)
    if flips.any():
        crops[flips] = flip_crops(crops[flips])
    return crops
