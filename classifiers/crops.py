"""Batched R-CNN region warping: every proposal of a batch of images cut to an SxS crop at once.

The R-CNN rule (Girshick et al., 2014, appendix A, "warp with context padding"): each box is
expanded about its centre so that, once the expanded box is warped to ``S x S``, the original box
fills the central ``(S - 2p) x (S - 2p)`` square; ``p = 16`` at ``S = 224``. The warp is
anisotropic (the aspect ratio is not kept), and whatever part of the expanded box lies outside the
image takes the dataset mean colour, i.e. zero once the crop is normalised.

Geometry (boxes are 0-based continuous pixels, see :mod:`detection.core.boxes`; pixel ``k`` covers
``[k, k + 1)`` and its value sits at its centre ``k + 0.5``). A box ``[x1, x2)`` becomes ``S``
output columns; column ``j`` is the bilinear interpolation of the image at

    ``x = x1 + (j + 0.5) * (x2 - x1) / S``      (continuous coordinates)

and the same for rows. This is exactly ``cv2.warpAffine(..., INTER_LINEAR, BORDER_CONSTANT)`` with
the affine map from output pixel centres to input coordinates, up to OpenCV's 1/32-pixel
fixed-point interpolation weights: near the image edge the interpolation blends the edge pixel
with the mean colour, as a constant border does.

Implementation: the images of a batch are uploaded once (as uint8), normalised on the device and
pasted into one zero canvas ``(N, 3, H_max + 2, W_max + 2)`` with a one-pixel zero margin on the
top and left. Every crop is then cut by a single :func:`torchvision.ops.roi_align` call
(``aligned=True`` gives the half-pixel convention above). The margin matters: ``roi_align``
replicates the edge pixel for samples up to one pixel outside its input, where a constant border
blends towards the fill; with a zero margin around each image (the canvas padding supplies it on
the bottom and right) the replicated "edge" is the fill itself, so samples just outside the image
blend towards zero and samples further out are zero, as in OpenCV.

``sampling_ratio=1`` takes one bilinear sample per output pixel, as R-CNN did (MATLAB ``imresize``
without antialiasing, Caffe's ``cv::resize`` with ``INTER_LINEAR``); it aliases when a large box is
shrunk a lot. ``sampling_ratio=0`` averages ``ceil(box side / S)`` samples per output pixel and
axis instead, close to an area (box-filter) resize for big boxes and identical to ``1`` for boxes
no larger than the crop.

:func:`gather_crops` computes the same samples as ``roi_align`` with ``sampling_ratio=1`` from
plain tensor operations on a channels-last copy of the canvas. Eager it is slower than
``roi_align``; under ``torch.compile`` it becomes one fused, multi-threaded loop that writes the
crops straight in the network's dtype and memory format, which is how the compiled scoring path
of :class:`classifiers.scoring.CropScorer` cuts its crops.

:func:`warp_crops_host` cuts the same crops on the host with one ``cv2.warpAffine`` per box
straight from the uint8 images, and normalises only the crops. A training batch draws a few
windows from each of many images: normalising whole images onto a canvas cost most of the time
of cutting a batch on a CPU, so :mod:`classifiers.train` cuts its batches this way there.

Shapes: ``K = sum_i B_i`` crops for ``N`` images with ``B_i`` boxes each; crops come out
image-major with each image's boxes in their given order.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import cv2
import numpy as np
import torch
import torchvision.ops
from torch import Tensor

from classifiers.inception import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "RCNN_PADDING",
    "RCNN_SIZE",
    "context_padding",
    "context_boxes",
    "images_to_canvas",
    "make_rois",
    "crop_rois",
    "canvas_pixels",
    "gather_crops",
    "warp_crops",
    "warp_crops_host",
    "flip_crops",
]

logger = logging.getLogger(__name__)


#: R-CNN's warp: 227x227 crops in the original, 224x224 for GoogLeNet, with 16 px of context.
RCNN_SIZE = 224
RCNN_PADDING = 16

# Zero margin (in pixels) to the top-left of every image on the canvas; see the module note.
_MARGIN = 1

ImageLike = np.ndarray | Tensor
BoxesLike = np.ndarray | Tensor | Sequence[Sequence[float]]


def context_padding(size: int, padding: int | None = None) -> int:
    """The context padding for crops of side ``size``: ``padding`` if given, else 16 px at 224, scaled.

    Raises:
        ValueError: if the padding leaves no room for the box (``2 * padding >= size``).
    """
    if padding is None:
        padding = int(round(RCNN_PADDING * size / RCNN_SIZE))
    if padding < 0 or 2 * padding >= size:
        raise ValueError(f"context padding {padding} does not fit a crop of side {size}")
    return padding


def context_boxes(boxes: Tensor | np.ndarray, size: int = RCNN_SIZE, padding: int | None = None) -> Tensor:
    """Expand boxes about their centres so that warping them to ``size`` leaves ``padding`` of context.

    The expanded width is ``w * size / (size - 2 * padding)`` (the same for the height), so the
    original box lands on the central ``(size - 2p) x (size - 2p)`` square of the warped crop.
    Inverted boxes (``x2 < x1``) count as zero-sized: they expand to a point at their centre.

    Args:
        boxes: ``(N, 4)`` ``(x1, y1, x2, y2)``, continuous pixels.
        size: side ``S`` of the square crop.
        padding: context in output pixels; ``round(16 * S / 224)`` when None.

    Returns:
        ``(N, 4)`` float32 tensor on the device of ``boxes`` (the CPU for an array).
    """
    boxes_t = torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4)
    padding = context_padding(size, padding)
    scale = size / (size - 2 * padding)
    centre = (boxes_t[:, :2] + boxes_t[:, 2:]) * 0.5
    half = (boxes_t[:, 2:] - boxes_t[:, :2]).clamp(min=0) * (0.5 * scale)
    return torch.cat([centre - half, centre + half], dim=1)


def _normalisation(mean: Sequence[float], std: Sequence[float]) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """``(x / 255 - mean) / std`` folded into one multiply-add per pixel: per-channel (scale, shift)."""
    return tuple(1.0 / (255.0 * s) for s in std), tuple(-m / s for m, s in zip(mean, std))


def _image_to_chw_uint8(image: ImageLike) -> Tensor:
    """A uint8 RGB image, ``(H, W, 3)`` array or ``(3, H, W)`` tensor, as a ``(3, H, W)`` tensor (no copy)."""
    if isinstance(image, Tensor):
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensors must be (3, H, W), got {tuple(image.shape)}")
        if image.dtype != torch.uint8:
            raise ValueError(f"image tensors must be uint8, got {image.dtype}")
        return image
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"image arrays must be (H, W, 3) RGB, got {array.shape}")
    if array.dtype != np.uint8:
        raise ValueError(f"image arrays must be uint8, got {array.dtype}")
    if not array.flags.writeable:
        # torch warns about read-only arrays (e.g. decoded by some libraries); we only read them.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.from_numpy(array).permute(2, 0, 1)
    return torch.from_numpy(array).permute(2, 0, 1)


def images_to_canvas(
    images: Sequence[ImageLike],
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str | None = None,
) -> Tensor:
    """Normalise images on ``device`` and paste them into one zero canvas.

    Image ``i`` occupies ``canvas[i, :, 1:1 + H_i, 1:1 + W_i]``; everything else is zero, which is
    the mean colour after normalisation. Each image crosses to the device once, as uint8.

    Args:
        images: ``N`` uint8 RGB images, ``(H_i, W_i, 3)`` arrays or ``(3, H_i, W_i)`` tensors.
        mean, std: per-channel statistics on the [0, 1] scale; ``(x / 255 - mean) / std``.
        device: where the canvas lives; that of the first tensor image (else the CPU) when None.

    Returns:
        ``(N, 3, H_max + 2, W_max + 2)`` float32 tensor.
    """
    chw = [_image_to_chw_uint8(image) for image in images]
    if device is None:
        device = chw[0].device if chw else torch.device("cpu")
    height = max((c.shape[1] for c in chw), default=0) + 2 * _MARGIN
    width = max((c.shape[2] for c in chw), default=0) + 2 * _MARGIN
    canvas = torch.zeros((len(chw), 3, height, width), dtype=torch.float32, device=device)
    scale, shift = (torch.tensor(v, dtype=torch.float32, device=device).view(3, 1, 1) for v in _normalisation(mean, std))
    for i, image in enumerate(chw):
        _, h, w = image.shape
        pixels = image.to(device=device, non_blocking=True)
        torch.addcmul(shift, pixels, scale, out=canvas[i, :, _MARGIN : _MARGIN + h, _MARGIN : _MARGIN + w])
    return canvas


def make_rois(
    boxes_per_image: Sequence[BoxesLike],
    size: int = RCNN_SIZE,
    padding: int | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """The context boxes of every image as ``roi_align`` rows, in the coordinates of the canvas.

    Args:
        boxes_per_image: ``N`` arrays or tensors ``(B_i, 4)``, in the pixels of image ``i``.
        size, padding: as in :func:`context_boxes`.
        device: where the rows go (the CPU when None).

    Returns:
        ``(K, 5)`` float32 rows ``(image index, x1, y1, x2, y2)``, ``K = sum_i B_i``, image-major.
    """
    parts = []
    for index, boxes in enumerate(boxes_per_image):
        boxes_t = boxes if isinstance(boxes, Tensor) else torch.from_numpy(np.asarray(boxes, dtype=np.float32))
        # The boxes are few (K x 4 floats): work on the CPU, move the result once.
        expanded = context_boxes(boxes_t.detach().cpu(), size, padding)
        column = torch.full((len(expanded), 1), float(index), dtype=torch.float32)
        parts.append(torch.cat([column, expanded + _MARGIN], dim=1))
    rois = torch.cat(parts) if parts else torch.zeros((0, 5), dtype=torch.float32)
    return rois.to(device or "cpu")


def crop_rois(
    canvas: Tensor,
    rois: Tensor,
    size: int = RCNN_SIZE,
    sampling_ratio: int = 1,
    out_dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
) -> Tensor:
    """Cut ``rois`` out of ``canvas`` in one ``roi_align`` call.

    A scoring loop builds the canvas and the rows once (:func:`images_to_canvas`,
    :func:`make_rois`) and cuts them a batch at a time, so the crops of thousands of boxes never
    have to exist all at once.

    Args:
        canvas: ``(N, 3, H, W)`` float32 from :func:`images_to_canvas`.
        rois: ``(K, 5)`` rows from :func:`make_rois` (or a slice of them), on the canvas device.
        size, sampling_ratio, out_dtype, channels_last: as in :func:`warp_crops`.

    Returns:
        ``(K, 3, size, size)`` crops.
    """
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    if len(rois) == 0:
        return torch.zeros((0, 3, size, size), dtype=out_dtype, device=canvas.device).contiguous(memory_format=memory_format)
    crops = torchvision.ops.roi_align(
        canvas, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=sampling_ratio, aligned=True
    )
    return crops.to(dtype=out_dtype, memory_format=memory_format)


def canvas_pixels(canvas: Tensor) -> tuple[Tensor, Tensor]:
    """A canvas as the inputs of :func:`gather_crops`: its pixels as rows, and its shape as data.

    Args:
        canvas: ``(N, 3, H, W)`` float32 from :func:`images_to_canvas`.

    Returns:
        ``(N * H * W, 3)`` pixels (channels last, row-major over image, row, column) and the
        int64 tensor ``[H, W]`` on the canvas device. The shape travels as a tensor so that a
        compiled :func:`gather_crops` serves every canvas size without compiling again.
    """
    _, _, height, width = canvas.shape
    # contiguous(): for one image the reshape is a strided view, which would compile apart.
    pixels = canvas.permute(0, 2, 3, 1).reshape(-1, canvas.shape[1]).contiguous()
    return pixels, torch.tensor([height, width], dtype=torch.int64, device=canvas.device)


def gather_crops(pixels: Tensor, canvas_hw: Tensor, rois: Tensor, size: int = RCNN_SIZE, out_dtype: torch.dtype = torch.float32) -> Tensor:
    """The crops of :func:`crop_rois` with ``sampling_ratio=1``, from gathers a compiler can fuse.

    Output pixel ``(i, j)`` of a row ``(n, x1, y1, x2, y2)`` is the bilinear sample at
    ``x = x1 + (j + 0.5) * (x2 - x1) / S - 0.5`` (pixel-centre coordinates; likewise ``y``) with
    ``roi_align``'s edge rule: zero for samples more than one pixel outside the canvas, the edge
    value replicated for samples within one pixel of it.

    Args:
        pixels, canvas_hw: from :func:`canvas_pixels`.
        rois: ``(K, 5)`` rows from :func:`make_rois`, on the same device.
        size: side ``S`` of the crops.
        out_dtype: dtype of the crops (the interpolation runs in float32).

    Returns:
        ``(K, 3, S, S)`` crops in the channels_last memory format.
    """
    height, width = canvas_hw[0], canvas_hw[1]
    step = (torch.arange(size, device=rois.device, dtype=torch.float32) + 0.5) / size
    x = rois[:, 1:2] + step * (rois[:, 3:4] - rois[:, 1:2]) - 0.5  # (K, S)
    y = rois[:, 2:3] + step * (rois[:, 4:5] - rois[:, 2:3]) - 0.5
    inside = ((y >= -1) & (y <= height))[:, :, None] & ((x >= -1) & (x <= width))[:, None, :]
    x0, x1, fx = _corners(x, width)
    y0, y1, fy = _corners(y, height)
    image = rois[:, 0].long()[:, None, None] * (height * width)
    row0, row1 = image + y0[:, :, None] * width, image + y1[:, :, None] * width

    def sample(row: Tensor, column: Tensor) -> Tensor:
        return pixels[row + column[:, None, :]]  # (K, S, S, 3)

    fx, fy = fx[:, None, :, None], fy[:, :, None, None]
    top = sample(row0, x0) * (1 - fx) + sample(row0, x1) * fx
    bottom = sample(row1, x0) * (1 - fx) + sample(row1, x1) * fx
    crops = torch.where(inside[..., None], top * (1 - fy) + bottom * fy, 0.0)
    return crops.to(out_dtype).permute(0, 3, 1, 2)


def _corners(coordinate: Tensor, extent: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``roi_align``'s two neighbours and the weight of the second along one axis."""
    coordinate = coordinate.clamp(min=0)
    low = coordinate.floor().long().clamp(max=extent - 1)
    at_edge = low >= extent - 1
    high = torch.where(at_edge, low, low + 1)
    fraction = torch.where(at_edge, 0.0, coordinate - low)
    return low, high, fraction


def warp_crops(
    images: Sequence[ImageLike],
    boxes_per_image: Sequence[BoxesLike],
    size: int = RCNN_SIZE,
    padding: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    device: torch.device | str | None = None,
    out_dtype: torch.dtype = torch.float32,
    channels_last: bool = True,
    sampling_ratio: int = 1,
) -> Tensor:
    """Cut every box of every image to a normalised ``size x size`` crop with R-CNN context padding.

    See the module note for the geometry. All crops come from one ``roi_align`` call over a
    canvas holding every image, so one call serves images of different sizes.

    Args:
        images: ``N`` uint8 RGB images, ``(H_i, W_i, 3)`` arrays or ``(3, H_i, W_i)`` tensors.
        boxes_per_image: ``N`` arrays or tensors ``(B_i, 4)`` of ``(x1, y1, x2, y2)`` boxes in
            the pixels of the matching image (they may cross or leave the image).
        size: side ``S`` of the crops.
        padding: context padding in output pixels; ``round(16 * S / 224)`` when None.
        mean, std: normalisation ``(x / 255 - mean) / std``; the area outside the image is 0.
        device: where to work and return the crops; that of the first tensor image (else the
            CPU) when None.
        out_dtype: dtype of the result (the warp itself runs in float32).
        channels_last: return the crops in the channels_last memory format.
        sampling_ratio: bilinear samples per output pixel and axis; 1 is R-CNN's point sampling,
            0 adapts to the box (``ceil(side / S)``) to average over large boxes.

    Returns:
        ``(K, 3, S, S)`` tensor, ``K = sum_i B_i``, image-major and in box order.

    Raises:
        ValueError: if the number of box lists differs from the number of images.
    """
    if len(images) != len(boxes_per_image):
        raise ValueError(f"{len(images)} images but {len(boxes_per_image)} box lists")
    canvas = images_to_canvas(images, mean, std, device)
    rois = make_rois(boxes_per_image, size, padding, canvas.device)
    logger.debug("warping %d boxes of %d images (canvas %s) to %dx%d", len(rois), len(images), tuple(canvas.shape), size, size)
    return crop_rois(canvas, rois, size, sampling_ratio, out_dtype, channels_last)


def _affine_maps(boxes: np.ndarray, size: int, padding: int | None, mirror: np.ndarray | None) -> np.ndarray:
    """``(K, 2, 3)`` float64 maps from output pixel indices to input pixel indices (``WARP_INVERSE_MAP``).

    Output column ``j`` samples ``x1 + (j + 0.5) * w / S - 0.5`` (the module note's geometry in
    pixel indices); a mirrored crop samples its columns right to left.
    """
    context = context_boxes(np.asarray(boxes, dtype=np.float32).reshape(-1, 4), size, padding).double().numpy()
    step = (context[:, 2:] - context[:, :2]) / size  # (K, 2): input pixels per output pixel
    start = context[:, :2] + 0.5 * step - 0.5
    maps = np.zeros((len(context), 2, 3))
    maps[:, 0, 0], maps[:, 0, 2] = step[:, 0], start[:, 0]
    maps[:, 1, 1], maps[:, 1, 2] = step[:, 1], start[:, 1]
    if mirror is not None:
        maps[mirror, 0, 0] = -step[mirror, 0]
        maps[mirror, 0, 2] = start[mirror, 0] + (size - 1) * step[mirror, 0]
    return maps


def warp_crops_host(
    images: Sequence[np.ndarray],
    boxes_per_image: Sequence[BoxesLike],
    size: int = RCNN_SIZE,
    padding: int | None = None,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    mirror: np.ndarray | None = None,
) -> Tensor:
    """The crops of :func:`warp_crops` (``sampling_ratio=1``), cut on the host from uint8 images.

    One ``cv2.warpAffine`` per box into a uint8 crop (constant border in the mean colour), then
    only the crops are normalised. OpenCV's fixed-point interpolation (positions to 1/32 pixel)
    and the rounding to uint8 keep them within about one grey level of :func:`warp_crops`.

    Args:
        images: ``N`` uint8 RGB ``(H_i, W_i, 3)`` arrays.
        boxes_per_image: ``N`` arrays ``(B_i, 4)`` of ``(x1, y1, x2, y2)`` boxes, as in :func:`warp_crops`.
        size, padding, mean, std: as in :func:`warp_crops`.
        mirror: ``(K,)`` bool, crops to mirror left to right (sampled mirrored, no extra pass).

    Returns:
        ``(K, 3, S, S)`` float32 tensor in the channels_last memory format, on the CPU.
    """
    if len(images) != len(boxes_per_image):
        raise ValueError(f"{len(images)} images but {len(boxes_per_image)} box lists")
    counts = [len(boxes) for boxes in boxes_per_image]
    boxes = np.concatenate([np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in boxes_per_image]) if counts else np.zeros((0, 4), np.float32)
    maps = _affine_maps(boxes, size, padding, mirror)
    if len(maps) == 0:
        return torch.zeros((0, 3, size, size), dtype=torch.float32).contiguous(memory_format=torch.channels_last)
    crops = np.empty((len(maps), size, size, 3), dtype=np.uint8)
    border = tuple(255.0 * m for m in mean)
    flags = cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP
    start = 0
    for image, count in zip(images, counts):
        # Checked as warp_crops checks its images; the round trip gives back the array itself.
        pixels_hwc = np.ascontiguousarray(_image_to_chw_uint8(image).permute(1, 2, 0).numpy())
        for k in range(start, start + count):
            cv2.warpAffine(pixels_hwc, maps[k], (size, size), dst=crops[k], flags=flags, borderMode=cv2.BORDER_CONSTANT, borderValue=border)
        start += count
    # OpenCV's per-channel arithmetic on the crops as one tall image: several times faster here
    # than broadcasting over a channel axis of 3.
    scale, shift = _normalisation(mean, std)
    normalised = crops.reshape(-1, size, 3).astype(np.float32)
    cv2.multiply(normalised, scale, dst=normalised)
    cv2.add(normalised, shift, dst=normalised)
    # (K, S, S, 3) is the channels_last layout of (K, 3, S, S): the permute is a view.
    return torch.from_numpy(normalised.reshape(crops.shape)).permute(0, 3, 1, 2)


def flip_crops(crops: Tensor) -> Tensor:
    """Mirror crops left to right: ``(K, C, S, S)`` -> ``(K, C, S, S)`` in the same memory format."""
    channels_last = crops.dim() == 4 and crops.is_contiguous(memory_format=torch.channels_last) and not crops.is_contiguous()
    return crops.flip(-1).contiguous(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
