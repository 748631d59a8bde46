"""classifiers.crops against a per-crop OpenCV reference with the same geometry.

The reference warps one box at a time with ``cv2.warpAffine`` (bilinear, constant border in the
mean colour), mapping output pixel centres ``j + 0.5`` to ``x1 + (j + 0.5) * w / S`` in continuous
input coordinates, then normalises. OpenCV quantises interpolation positions to 1/32 pixel, so
agreement is close but not bit-exact: the bounds below are in normalised units (1/255 of the
intensity range is ~0.017 of them).
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from classifiers.crops import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    canvas_pixels,
    context_boxes,
    context_padding,
    crop_rois,
    flip_crops,
    gather_crops,
    images_to_canvas,
    make_rois,
    warp_crops,
    warp_crops_host,
)

MEAN = np.array(IMAGENET_MEAN, dtype=np.float32)
STD = np.array(IMAGENET_STD, dtype=np.float32)


pytestmark = pytest.mark.usefixtures("one_thread")


def make_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A uint8 RGB test picture: smooth colour ramps, blurred noise and a few hard-edged blocks."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([xx / width * 200, yy / height * 200, (xx + yy) / (width + height) * 120 + 60], axis=-1)
    noise = cv2.GaussianBlur(rng.normal(0, 60, (height, width, 3)).astype(np.float32), (0, 0), 2.0)
    image += noise
    for _ in range(6):
        x1, y1 = rng.integers(0, max(width - 10, 1)), rng.integers(0, max(height - 10, 1))
        x2, y2 = x1 + rng.integers(5, max(width // 3, 6)), y1 + rng.integers(5, max(height // 3, 6))
        image[y1:y2, x1:x2] = rng.uniform(0, 255, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


def reference_crop(image: np.ndarray, box: np.ndarray, size: int, padding: int | None = None) -> np.ndarray:
    """One normalised crop ``(3, S, S)`` the slow, obvious way: expand, cv2.warpAffine, normalise."""
    x1, y1, x2, y2 = context_boxes(box[None], size, padding)[0].double().numpy()
    sx, sy = (x2 - x1) / size, (y2 - y1) / size
    # Output pixel index u has its centre at u + 0.5; input continuous x is pixel index x - 0.5.
    matrix = np.array([[sx, 0.0, x1 + 0.5 * sx - 0.5], [0.0, sy, y1 + 0.5 * sy - 0.5]])
    warped = cv2.warpAffine(
        image.astype(np.float32) / 255.0,
        matrix,
        (size, size),
        flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT,
        borderValue=tuple(float(m) for m in MEAN),
    )
    return ((warped - MEAN) / STD).transpose(2, 0, 1)


def reference_crops(image: np.ndarray, boxes: np.ndarray, size: int, padding: int | None = None) -> np.ndarray:
    return np.stack([reference_crop(image, box, size, padding) for box in boxes])


def assert_close_to_reference(ours: torch.Tensor, reference: np.ndarray, mean_tol: float = 0.005, p99_tol: float = 0.05) -> None:
    diff = np.abs(ours.float().numpy() - reference)
    assert diff.mean() < mean_tol, f"mean abs diff {diff.mean():.4f}"
    assert np.percentile(diff, 99) < p99_tol, f"99th percentile {np.percentile(diff, 99):.4f}"


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return make_image(120, 160)


# ---------------------------------------------------------------------------------------------
# context_boxes


def test_context_boxes_hand_worked() -> None:
    # w=100, h=50, centre (60, 45); at S=224, p=16 the box grows by 224/192 = 7/6.
    out = context_boxes(np.array([[10, 20, 110, 70]], dtype=np.float32), 224, 16)
    expected = [60 - 350 / 6, 45 - 175 / 6, 60 + 350 / 6, 45 + 175 / 6]
    assert out.dtype == torch.float32 and out.shape == (1, 4)
    np.testing.assert_allclose(out[0].numpy(), expected, rtol=1e-6)


def test_context_boxes_no_padding_and_degenerate() -> None:
    boxes = torch.tensor([[1.0, 2.0, 3.0, 5.0], [4.0, 4.0, 4.0, 4.0], [6.0, 6.0, 2.0, 8.0]])
    torch.testing.assert_close(context_boxes(boxes, 100, 0)[:2], boxes[:2])
    # An inverted box counts as zero-sized: a point at its centre (x = 4), rows still expand.
    inverted = context_boxes(boxes, 100, 0)[2]
    assert inverted[0] == inverted[2] == 4.0 and inverted[1] == 6.0 and inverted[3] == 8.0


def test_context_padding_scales_with_size() -> None:
    assert context_padding(224) == 16
    assert context_padding(227) == 16
    assert context_padding(112) == 8
    assert context_padding(96) == 7  # round(6.86)
    assert context_padding(224, 0) == 0
    with pytest.raises(ValueError):
        context_padding(32, 16)


def test_box_fills_the_central_square() -> None:
    # A white rectangle exactly on the box: the crop is white inside [p, S - p), black outside.
    image = np.zeros((100, 150, 3), dtype=np.uint8)
    image[30:90, 40:140] = 255
    size, pad = 64, 8
    crop = warp_crops([image], [np.array([[40, 30, 140, 90]])], size, pad, mean=(0, 0, 0), std=(1, 1, 1))[0, 0]
    inside = crop[pad + 1 : size - pad - 1, pad + 1 : size - pad - 1]
    ring = torch.cat([crop[: pad - 1].flatten(), crop[size - pad + 1 :].flatten(), crop[:, : pad - 1].flatten(), crop[:, size - pad + 1 :].flatten()])
    assert torch.allclose(inside, torch.ones_like(inside))
    assert torch.allclose(ring, torch.zeros_like(ring))


# ---------------------------------------------------------------------------------------------
# warp_crops against OpenCV


def test_boxes_inside_match_opencv(image: np.ndarray) -> None:
    boxes = np.array([[30, 25, 130, 95], [50, 40, 90, 60], [20.5, 18.25, 60.75, 100.5], [60, 30, 100, 90]], np.float32)
    ours = warp_crops([image], [boxes], 64, channels_last=False)
    assert_close_to_reference(ours, reference_crops(image, boxes, 64))


def test_boxes_crossing_the_border_match_opencv(image: np.ndarray) -> None:
    boxes = np.array(
        [[-20, -10, 60, 50], [120, 80, 190, 150], [-5, 30, 170, 90], [10, -30, 50, 140], [0, 0, 160, 120]],
        np.float32,
    )
    ours = warp_crops([image], [boxes], 48, channels_last=False)
    assert_close_to_reference(ours, reference_crops(image, boxes, 48))


def test_tiny_boxes_upsampled_match_opencv(image: np.ndarray) -> None:
    boxes = np.array([[70, 50, 73, 55], [0, 0, 4, 4], [157, 117, 160, 120], [80.3, 60.7, 82.1, 61.9]], np.float32)
    ours = warp_crops([image], [boxes], 64, channels_last=False)
    assert_close_to_reference(ours, reference_crops(image, boxes, 64))


def test_default_size_matches_opencv(image: np.ndarray) -> None:
    boxes = np.array([[10, 15, 150, 110], [-30, 40, 80, 130]], np.float32)
    ours = warp_crops([image], [boxes])  # 224, padding 16
    assert ours.shape == (2, 3, 224, 224)
    assert_close_to_reference(ours, reference_crops(image, boxes, 224))


def test_large_downsampling_point_sampled_matches_warp_affine() -> None:
    # sampling_ratio=1 is R-CNN's point-sampled bilinear resize, which is what warpAffine does.
    image = make_image(400, 500, seed=1)
    boxes = np.array([[0, 0, 500, 400], [37, 21, 463, 388]], np.float32)
    ours = warp_crops([image], [boxes], 32, sampling_ratio=1, channels_last=False)
    assert_close_to_reference(ours, reference_crops(image, boxes, 32))


def test_large_downsampling_averaged_matches_inter_area() -> None:
    # sampling_ratio=0 averages ceil(side / S) samples per bin: with an integer factor and
    # pixel-aligned boxes the samples sit on pixel centres and the result is INTER_AREA's box filter.
    image = make_image(300, 400, seed=2)
    size, factor = 32, 8
    boxes = np.array([[16, 24, 16 + size * factor, 24 + size * factor], [100, 0, 100 + size * factor, size * factor]], np.float32)
    ours = warp_crops([image], [boxes], size, padding=0, sampling_ratio=0, channels_last=False)
    for crop, (x1, y1, x2, y2) in zip(ours, boxes.astype(int)):
        area = cv2.resize(image[y1:y2, x1:x2].astype(np.float32) / 255.0, (size, size), interpolation=cv2.INTER_AREA)
        reference = ((area - MEAN) / STD).transpose(2, 0, 1)
        np.testing.assert_allclose(crop.numpy(), reference, atol=1e-4)


def test_sampling_ratio_irrelevant_for_boxes_smaller_than_the_crop(image: np.ndarray) -> None:
    boxes = np.array([[30, 25, 70, 65], [-10, 90, 20, 130]], np.float32)
    torch.testing.assert_close(warp_crops([image], [boxes], 64, sampling_ratio=0), warp_crops([image], [boxes], 64, sampling_ratio=1))


def test_images_of_different_sizes_in_one_call_match_opencv() -> None:
    # The canvas is padded to the largest image: samples past a smaller image's right and bottom
    # edges must still blend towards the mean as a constant border does, never read padding.
    small, large = make_image(50, 70, seed=3), make_image(130, 110, seed=4)
    boxes_small = np.array([[40, 20, 75, 55], [-10, -10, 80, 60], [60, 40, 70, 50]], np.float32)
    boxes_large = np.array([[90, 100, 115, 140], [5, 5, 105, 125]], np.float32)
    ours = warp_crops([small, large], [boxes_small, boxes_large], 40, channels_last=False)
    reference = np.concatenate([reference_crops(small, boxes_small, 40), reference_crops(large, boxes_large, 40)])
    assert_close_to_reference(ours, reference)


# ---------------------------------------------------------------------------------------------
# gather_crops: the compilable twin of roi_align


def test_gather_crops_equals_roi_align_and_opencv() -> None:
    # Boxes inside, across every border, wholly outside, tiny and huge, on a canvas of two sizes.
    small, large = make_image(50, 70, seed=3), make_image(130, 110, seed=4)
    boxes = [
        np.array([[40, 20, 75, 55], [-10, -10, 80, 60], [60, 40, 70, 50], [-90, -90, -60, -70], [10, 10, 10.3, 10.2]], np.float32),
        np.array([[90, 100, 115, 140], [5, 5, 105, 125], [-400, -300, 500, 600]], np.float32),
    ]
    canvas = images_to_canvas([small, large])
    rois = make_rois(boxes, 40)
    pixels, canvas_hw = canvas_pixels(canvas)
    assert pixels.shape == (2 * canvas.shape[2] * canvas.shape[3], 3) and pixels.is_contiguous()
    assert canvas_hw.tolist() == list(canvas.shape[2:])
    ours = gather_crops(pixels, canvas_hw, rois, 40)
    assert ours.shape == (8, 3, 40, 40) and ours.is_contiguous(memory_format=torch.channels_last)
    # Equal up to float32 rounding of the sample coordinates (~1e-5 px at these sizes).
    torch.testing.assert_close(ours, crop_rois(canvas, rois, 40), atol=1e-3, rtol=0)
    reference = np.concatenate([reference_crops(small, boxes[0], 40), reference_crops(large, boxes[1], 40)])
    assert_close_to_reference(ours, reference)


def test_gather_crops_one_image_canvas_and_output_dtype(image: np.ndarray) -> None:
    canvas = images_to_canvas([image])
    pixels, canvas_hw = canvas_pixels(canvas)
    assert pixels.is_contiguous()  # one image: the reshape alone would be a strided view
    rois = make_rois([np.array([[3, 4, 90, 100], [100, 50, 170, 130]], np.float32)], 32)
    crops = gather_crops(pixels, canvas_hw, rois, 32, out_dtype=torch.bfloat16)
    assert crops.dtype == torch.bfloat16 and crops.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(crops.float(), crop_rois(canvas, rois, 32), atol=0.02, rtol=0.01)


# ---------------------------------------------------------------------------------------------
# warp_crops_host: the training batches' warp on a CPU


def test_host_warp_matches_opencv_and_roi_align() -> None:
    # Two image sizes; boxes inside, across every border, wholly outside, tiny and huge.
    small, large = make_image(50, 70, seed=3), make_image(130, 110, seed=4)
    boxes = [
        np.array([[40, 20, 75, 55], [-10, -10, 80, 60], [60, 40, 70, 50], [-90, -90, -60, -70], [10, 10, 10.3, 10.2]], np.float32),
        np.array([[90, 100, 115, 140], [5, 5, 105, 125], [-400, -300, 500, 600]], np.float32),
    ]
    ours = warp_crops_host([small, large], boxes, 40)
    assert ours.shape == (8, 3, 40, 40) and ours.dtype == torch.float32
    assert ours.is_contiguous(memory_format=torch.channels_last)
    reference = np.concatenate([reference_crops(small, boxes[0], 40), reference_crops(large, boxes[1], 40)])
    # OpenCV's uint8 path interpolates in fixed point and rounds to grey levels: within one grey
    # level (1 / 255 / 0.225 = 0.0174 normalised) of the float reference, which shares its positions.
    np.testing.assert_allclose(ours.numpy(), reference, atol=0.0175, rtol=0)


def test_host_warp_mirrors_by_sampling() -> None:
    image = make_image(120, 160)
    boxes = np.array([[30, 25, 130, 95], [-20, -10, 60, 50], [50.5, 40.25, 90.75, 60.5]], np.float32)
    mirror = np.array([True, False, True])
    plain = warp_crops_host([image], [boxes], 32)
    mirrored = warp_crops_host([image], [boxes], 32, mirror=mirror)
    torch.testing.assert_close(mirrored[1], plain[1], atol=0, rtol=0)
    # OpenCV rounds sample positions to 1/32 px from either side: equal up to that.
    for k in (0, 2):
        assert (mirrored[k] - plain[k].flip(-1)).abs().mean() < 0.005


def test_host_warp_hand_worked_and_empty() -> None:
    # A white rectangle exactly on the box: white inside [p, S - p), the mean colour (0) beyond the image.
    image = np.zeros((100, 150, 3), dtype=np.uint8)
    image[30:90, 40:140] = 255
    crop = warp_crops_host([image], [np.array([[40, 30, 140, 90]], np.float32)], 64, 8, mean=(0, 0, 0), std=(1, 1, 1))[0, 0]
    assert torch.equal(crop[9:55, 9:55], torch.ones(46, 46))
    outside = warp_crops_host([image], [np.array([[-300, -300, -200, -200]], np.float32)], 16)
    assert outside.abs().max() < 0.01  # the border is the mean colour, rounded to grey levels
    empty = np.zeros((0, 4), np.float32)
    assert warp_crops_host([image, image], [empty, empty], 32).shape == (0, 3, 32, 32)
    with pytest.raises(ValueError, match="2 box lists"):
        warp_crops_host([image], [empty, empty], 32)


# ---------------------------------------------------------------------------------------------
# Layout, order, edge cases


def test_shape_dtype_and_layout(image: np.ndarray) -> None:
    boxes = np.array([[10, 10, 50, 60], [20, 30, 90, 100]], np.float32)
    crops = warp_crops([image], [boxes], 32)
    assert crops.shape == (2, 3, 32, 32) and crops.dtype == torch.float32
    assert crops.is_contiguous(memory_format=torch.channels_last)
    plain = warp_crops([image], [boxes], 32, channels_last=False)
    assert plain.is_contiguous()
    torch.testing.assert_close(crops, plain)
    half = warp_crops([image], [boxes], 32, out_dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), plain, atol=0.02, rtol=0.01)


def test_order_is_image_major_and_keeps_box_order() -> None:
    images = [make_image(60, 80, seed=5), make_image(90, 70, seed=6), make_image(40, 40, seed=7)]
    rng = np.random.default_rng(0)
    boxes = [np.sort(rng.uniform(-10, 90, (n, 2, 2)), axis=1).transpose(0, 2, 1).reshape(n, 4)[:, [0, 2, 1, 3]] for n in (3, 0, 4)]
    batched = warp_crops(images, boxes, 24)
    assert batched.shape == (7, 3, 24, 24)
    singles = [warp_crops([im], [b[None]], 24)[0] for im, bs in zip(images, boxes) for b in bs]
    torch.testing.assert_close(batched, torch.stack(singles), atol=1e-5, rtol=0)


def test_tensor_inputs_match_arrays(image: np.ndarray) -> None:
    boxes = np.array([[10, 10, 50, 60], [-20, 30, 90, 140]], np.float32)
    from_arrays = warp_crops([image], [boxes], 32)
    from_tensors = warp_crops([torch.from_numpy(image).permute(2, 0, 1).contiguous()], [torch.from_numpy(boxes)], 32)
    torch.testing.assert_close(from_arrays, from_tensors)


def test_empty_box_lists(image: np.ndarray) -> None:
    empty = np.zeros((0, 4), np.float32)
    assert warp_crops([image, image], [empty, empty], 32).shape == (0, 3, 32, 32)
    assert warp_crops([], [], 32).shape == (0, 3, 32, 32)
    some = warp_crops([image, image], [empty, np.array([[1, 2, 30, 40]], np.float32)], 32)
    assert some.shape == (1, 3, 32, 32)
    with pytest.raises(ValueError):
        warp_crops([image], [empty, empty], 32)


def test_zero_size_and_inverted_boxes_give_the_centre_colour(image: np.ndarray) -> None:
    boxes = np.array([[40.5, 30.5, 40.5, 30.5], [80, 60, 80, 90], [90.5, 70.5, 60.5, 50.5]], np.float32)
    crops = warp_crops([image], [boxes], 16)
    assert torch.isfinite(crops).all()
    # A zero-sized box samples one point, the centre pixel (x = 40.5 is the centre of column 40).
    expected = (image[30, 40] / 255.0 - MEAN) / STD
    np.testing.assert_allclose(crops[0].mean(dim=(1, 2)).numpy(), expected, atol=1e-5)
    assert crops[0].std(dim=(1, 2)).max() < 1e-5
    expected = (image[60, 75] / 255.0 - MEAN) / STD  # inverted: centre (75.5, 60.5)
    np.testing.assert_allclose(crops[2, :, 0, 0].numpy(), expected, atol=1e-5)


def test_outside_the_image_is_the_mean() -> None:
    # Image in (almost) the mean colour, boxes partly or wholly outside: the whole crop is ~0.
    mean_colour = np.round(MEAN * 255).astype(np.uint8)
    image = np.broadcast_to(mean_colour, (50, 60, 3)).copy()
    boxes = np.array([[-100, -100, -50, -40], [200, 10, 260, 40], [-30, -20, 90, 80]], np.float32)
    crops = warp_crops([image], [boxes], 32)
    assert crops.abs().max() < 1.0 / 255 / min(IMAGENET_STD)
    assert torch.count_nonzero(crops[:2]) == 0  # wholly outside: exactly the fill


def test_canvas_holds_normalised_images_with_zero_margin() -> None:
    a, b = make_image(20, 30, seed=8), make_image(25, 12, seed=9)
    canvas = images_to_canvas([a, b])
    assert canvas.shape == (2, 3, 27, 32)
    expected = (a / 255.0 - MEAN) / STD
    np.testing.assert_allclose(canvas[0, :, 1:21, 1:31].permute(1, 2, 0).numpy(), expected, atol=1e-5)
    assert canvas[0, :, 0].abs().max() == 0 and canvas[0, :, :, 0].abs().max() == 0
    assert canvas[1, :, :, 13:].abs().max() == 0


def test_flip_crops(image: np.ndarray) -> None:
    crops = warp_crops([image], [np.array([[10, 10, 50, 60]], np.float32)], 16)
    flipped = flip_crops(crops)
    assert flipped.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(flipped[..., 0], crops[..., -1])
    torch.testing.assert_close(flip_crops(flipped), crops)
    assert flip_crops(crops.contiguous()).is_contiguous()


def test_flip_of_crop_is_crop_of_mirrored_image(image: np.ndarray) -> None:
    box = np.array([[12.5, 20, 70, 95]], np.float32)
    mirrored_box = np.array([[160 - 70, 20, 160 - 12.5, 95]], np.float32)
    direct = flip_crops(warp_crops([image], [box], 32))
    mirrored = warp_crops([np.ascontiguousarray(image[:, ::-1])], [mirrored_box], 32)
    torch.testing.assert_close(direct, mirrored, atol=1e-5, rtol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu(image: np.ndarray) -> None:
    boxes = np.array([[10, 10, 50, 60], [-20, 30, 90, 140]], np.float32)
    on_gpu = warp_crops([image], [boxes], 64, device="cuda")
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), warp_crops([image], [boxes], 64), atol=1e-4, rtol=0)


def test_bad_images_are_refused() -> None:
    boxes = [np.zeros((0, 4), np.float32)]
    with pytest.raises(ValueError):
        warp_crops([np.zeros((10, 10, 3), np.float32)], boxes, 16)
    with pytest.raises(ValueError):
        warp_crops([np.zeros((10, 10), np.uint8)], boxes, 16)
    with pytest.raises(ValueError):
        warp_crops([torch.zeros((3, 10, 10))], boxes, 16)
