"""Reading images: every image enters the project here, as uint8 RGB ``(H, W, 3)``.

Decoding goes through Pillow because it reports truncated and corrupt files as errors (OpenCV
returns a partial image and prints to stderr). Grayscale, palette, RGBA, CMYK and 16-bit images
are converted to 8-bit RGB; alpha is dropped (composited on black would invent content, and
detection datasets use alpha rarely enough that dropping it is the expected behaviour).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from detection.core.problems import DataError

__all__ = ["read_image", "read_image_size", "IMAGE_SUFFIXES"]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".JPEG", ".JPG", ".PNG")


def _to_uint8_rgb(image: Image.Image, path: Path) -> np.ndarray:
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16-bit (or 32-bit integer) grayscale: keep the top 8 bits of the used range.
        array = np.asarray(image, dtype=np.int64)
        peak = int(array.max()) if array.size else 0
        shift = max(0, peak.bit_length() - 8)
        gray = (array >> shift).clip(0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode == "F":
        array = np.asarray(image, dtype=np.float64)
        low, high = float(np.min(array)), float(np.max(array))
        gray = np.zeros(array.shape, np.uint8) if high <= low else ((array - low) * (255.0 / (high - low))).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)
    if mode in ("RGB;16", "RGBA;16", "RGB;16B"):
        raise DataError(path, f"unsupported pixel format {mode}")
    if mode != "RGB":
        image = image.convert("RGB")
    array = np.asarray(image)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise DataError(path, f"could not convert pixel format {mode} to 8-bit RGB")
    return np.ascontiguousarray(array)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image file to uint8 RGB ``(H, W, 3)``.

    Raises:
        DataError: the file is missing, empty, truncated or not an image; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    try:
        with Image.open(path) as image:
            image.load()
            if getattr(image, "is_animated", False):
                image.seek(0)
            return _to_uint8_rgb(image, path)
    except UnidentifiedImageError:
        raise DataError(path, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(path, f"unreadable image ({error})") from None


def read_image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from the file header, without decoding the pixels."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return int(image.width), int(image.height)
    except FileNotFoundError:
        raise DataError(path, "image file not found") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as error:
        raise DataError(path, f"not a readable image ({error})") from None
