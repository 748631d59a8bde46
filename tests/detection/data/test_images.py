import logging

import numpy as np
import pytest
from PIL import Image

from detection.core.problems import DataError
from detection.data.images import (
    TRUNCATED_IMAGE,
    read_image,
    read_image_size,
    truncated_fault,
)


def test_rgb_png_round_trip(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    image = read_image(tmp_path / "a.png")
    assert image.dtype == np.uint8 and image.shape == (7, 9, 3)
    np.testing.assert_array_equal(image, pixels)
    assert read_image_size(tmp_path / "a.png") == (9, 7)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_other_modes_become_rgb(tmp_path, mode):
    Image.new(mode, (5, 4)).save(tmp_path / "a.tiff" if mode == "CMYK" else tmp_path / "a.png")
    image = read_image(tmp_path / ("a.tiff" if mode == "CMYK" else "a.png"))
    assert image.shape == (4, 5, 3) and image.dtype == np.uint8


def test_grayscale_keeps_values(tmp_path):
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    Image.fromarray(gray).save(tmp_path / "g.png")
    image = read_image(tmp_path / "g.png")
    np.testing.assert_array_equal(image[:, :, 0], gray)
    np.testing.assert_array_equal(image[:, :, 1], gray)


def test_16bit_scaled_to_8bit(tmp_path):
    values = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    Image.fromarray(values).save(tmp_path / "d.png")
    image = read_image(tmp_path / "d.png")
    assert image.dtype == np.uint8
    assert image.max() >= 200 and image[0, 0, 0] == 0
    # Order is preserved.
    assert np.all(np.diff(image[:, :, 0].ravel().astype(int)) >= 0)


def _smooth_pixels(height: int, width: int) -> np.ndarray:
    """A smooth colour gradient: JPEG keeps it to within a few levels."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], axis=2).astype(np.uint8)


def test_truncated_jpeg_is_decoded_in_part_with_one_warning(tmp_path, truncated_jpeg, caplog):
    pixels = _smooth_pixels(96, 64)
    path = truncated_jpeg(tmp_path / "t.jpg", pixels, keep=0.7)
    with caplog.at_level(logging.WARNING, logger="detection.data.images"):
        first = read_image(path)
        again = read_image(path)
    assert first.shape == (96, 64, 3) and first.dtype == np.uint8
    np.testing.assert_array_equal(first, again)
    # the rows the file still holds come back; the missing bottom is the decoder's grey fill
    assert np.abs(first[:16].astype(int) - pixels[:16]).max() <= 8
    assert np.abs(first[-8:].astype(int) - pixels[-8:]).mean() > 20
    lines = [r.getMessage() for r in caplog.records if "t.jpg" in r.getMessage()]
    assert len(lines) == 1 and TRUNCATED_IMAGE in lines[0]  # once per file, not once per read
    assert truncated_fault(path) and truncated_fault(str(path)) == truncated_fault(path)


def test_intact_files_are_not_reported_truncated(tmp_path):
    Image.fromarray(_smooth_pixels(16, 16)).save(tmp_path / "whole.jpg", quality=90)
    read_image(tmp_path / "whole.jpg")
    assert truncated_fault(tmp_path / "whole.jpg") is None and truncated_fault(None) is None


def test_undecodable_jpeg_is_still_an_error_naming_the_file(tmp_path, truncated_jpeg):
    # cut inside the headers: nothing of the picture is left to decode
    path = truncated_jpeg(tmp_path / "h.jpg", _smooth_pixels(64, 64), keep=0.1)
    with pytest.raises(DataError, match="h.jpg"):
        read_image(path)
    assert truncated_fault(path) is None
    # a truncated PNG is not recovered either
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "p.png")
    (tmp_path / "p.png").write_bytes((tmp_path / "p.png").read_bytes()[:200])
    with pytest.raises(DataError, match="p.png"):
        read_image(tmp_path / "p.png")


def test_not_an_image_and_missing(tmp_path):
    (tmp_path / "x.jpg").write_text("hello")
    with pytest.raises(DataError, match="x.jpg.*not a readable image"):
        read_image(tmp_path / "x.jpg")
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "missing.jpg")
