import numpy as np
import pytest
from PIL import Image

from detection.core.problems import DataError
from detection.data.images import read_image, read_image_size


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


def test_truncated_jpeg_is_an_error_naming_the_file(tmp_path):
    pixels = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "t.jpg", quality=90)
    data = (tmp_path / "t.jpg").read_bytes()
    (tmp_path / "t.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.jpg"):
        read_image(tmp_path / "t.jpg")


def test_not_an_image_and_missing(tmp_path):
    (tmp_path / "x.jpg").write_text("hello")
    with pytest.raises(DataError, match="x.jpg.*not a readable image"):
        read_image(tmp_path / "x.jpg")
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "missing.jpg")
