"""Reading images: every image enters the project here, as uint8 RGB ``(H, W, 3)``.

Decoding goes through Pillow because it reports truncated and corrupt files as errors (OpenCV
returns a partial image or nothing, and prints to stderr), which leaves the choice to us. Grayscale, palette, RGBA, CMYK and 16-bit images
are converted to 8-bit RGB; alpha is dropped (composited on black would invent content, and
detection datasets use alpha rarely enough that dropping it is the expected behaviour).

A JPEG that stops short of its end (common in scraped photo sets) is decoded as far as its data
goes, the rest filled in by the decoder (grey rows for a baseline JPEG), as OpenCV and Pillow's
``LOAD_TRUNCATED_IMAGES`` would; the file is logged once per process and remembered, so that
each stage can count it (:func:`truncated_fault`). Files that cannot be decoded at all still
raise :class:`DataError`.
"""

from __future__ import annotations

import io
import logging
import threading
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from detection.core.problems import DataError, WarningTally

__all__ = ["read_image", "read_image_size", "truncated_fault", "count_if_truncated", "report_truncated", "IMAGE_SUFFIXES", "TRUNCATED_IMAGE"]

logger = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".JPEG", ".JPG", ".PNG")

#: The warning kind under which stages count truncated images they used (see WarningTally).
TRUNCATED_IMAGE = "truncated image, decoded in part"

# JPEG's end-of-image marker: appended to a truncated file, it ends the entropy-coded data where
# the file ends, which is what libjpeg does itself on a premature end of file.
_JPEG_END = b"\xff\xd9"

# Files this process decoded in part: str(path) -> fault. Written under the lock, so each file is
# logged once even when threads decode it at the same time.
_truncated: dict[str, str] = {}
_truncated_lock = threading.Lock()


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

    A truncated JPEG comes back decoded in part, with one warning per file and process.

    Raises:
        DataError: the file is missing, empty, not an image, or corrupt or truncated beyond
            decoding; the message names it.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "image file not found")
    try:
        with Image.open(path) as image:
            try:
                image.load()
            except OSError as error:
                if image.format != "JPEG" or "truncated" not in str(error):
                    raise
                return _read_truncated_jpeg(path, error)
            if getattr(image, "is_animated", False):
                image.seek(0)
            return _to_uint8_rgb(image, path)
    except UnidentifiedImageError:
        raise DataError(path, "not a readable image (unknown or corrupt format)") from None
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(path, f"unreadable image ({error})") from None


def _read_truncated_jpeg(path: Path, error: OSError) -> np.ndarray:
    """Decode the data a truncated JPEG has, ended with an end-of-image marker; report the file.

    Raises:
        DataError: not even that decodes (e.g. the file stops inside its headers).
    """
    data = path.read_bytes()
    scan = _scan_data_start(data)
    if scan is None or scan >= len(data):
        raise DataError(path, f"unreadable image ({error}; the file ends before any picture data)")
    try:
        with Image.open(io.BytesIO(data + _JPEG_END)) as image:
            image.load()
            array = _to_uint8_rgb(image, path)
    except (OSError, SyntaxError, ValueError):
        raise DataError(path, f"unreadable image ({error})") from None
    report_truncated(path, f"JPEG data ends after {len(data)} bytes, the decoder filled in the rest")
    return array


def _scan_data_start(data: bytes) -> int | None:
    """Offset of the first compressed picture data in a JPEG (just past its first start-of-scan
    header), found by walking the marker segments from the start; None if the bytes end first.

    A file that stops before this point holds headers only: "decoding" it would invent the image.
    """
    position = 2  # past the start-of-image marker FFD8
    while position + 4 <= len(data):
        if data[position] != 0xFF:
            return None
        marker = data[position + 1]
        if marker == 0xFF:  # fill byte before a marker
            position += 1
            continue
        length = int.from_bytes(data[position + 2 : position + 4], "big")
        if marker == 0xDA:  # start of scan: its header, then the compressed data
            return position + 2 + length
        position += 2 + length
    return None


def report_truncated(path: str | Path, fault: str) -> None:
    """Remember that ``path`` was decoded in part and log it, the first time in this process only.

    :func:`read_image` calls it; a parent process calls it for files its workers decoded.
    """
    key = str(path)
    with _truncated_lock:
        first = key not in _truncated
        _truncated[key] = fault
    if first:
        logger.warning("%s: %s (%s)", path, TRUNCATED_IMAGE, fault)


def truncated_fault(path: str | Path | None) -> str | None:
    """What was missing from ``path`` if this process decoded it in part, else None (also for None)."""
    if path is None:
        return None
    return _truncated.get(str(path))


def count_if_truncated(tally: WarningTally, path: str | Path | None) -> bool:
    """Count ``path`` in ``tally`` under :data:`TRUNCATED_IMAGE` if this process decoded it in part
    (it was named in the log then); returns whether it did. What every stage does after reading."""
    if truncated_fault(path) is None:
        return False
    tally.count(TRUNCATED_IMAGE)
    return True


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
