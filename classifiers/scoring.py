"""The engine under :class:`classifiers.ensemble.Ensemble`: crops in, each member's softmax out.

:class:`CropScorer` holds every member ready for inference: a private copy in eval mode on the
device, in channels_last, under ``torch.inference_mode``, in bfloat16 autocast where the hardware
does bfloat16 natively (:func:`detection.core.devices.bf16_supported`), optionally compiled with
its weights frozen in. Crops go through in fixed batches (16 on a CPU, where small batches stay
in cache; 128 on a GPU); compiled members keep one static batch shape, the last batch padded.
Members run one after the other on each batch (stacking them with ``vmap`` turns every
convolution into a grouped one, which is slower on a CPU). A member whose source model changed
since it was copied (an optimizer step) is copied again before scoring, so frozen weights never
go stale. What each path measures is printed by ``benchmarks/bench_scoring.py``.
"""

from __future__ import annotations

import contextlib
import copy
import logging
from collections.abc import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from classifiers.crops import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RCNN_SIZE,
    BoxesLike,
    ImageLike,
    canvas_pixels,
    crop_rois,
    gather_crops,
    images_to_canvas,
    make_rois,
)
from detection.core.devices import avx512_kernels, bf16_supported, resolve_device

__all__ = ["CropScorer", "default_batch_size", "compiled_warp_supported"]

logger = logging.getLogger(__name__)

Forward = Callable[[Tensor], Tensor]
FeatureForward = Callable[[Tensor], tuple[Tensor, Tensor]]


class _WithFeatures(nn.Module):
    """A model's ``forward_with_features`` as a module's forward, so ``torch.compile`` can take it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.forward_with_features(x)  # type: ignore[operator]


def _compile_member(model: nn.Module, mode: str | None) -> Forward:
    """``torch.compile`` of one member; a module-level function so tests can replace it."""
    return torch.compile(model, mode=mode)  # type: ignore[return-value]


def _compile_warp() -> Callable[..., Tensor]:
    """``torch.compile`` of :func:`classifiers.crops.gather_crops`, for every canvas and crop count."""
    return torch.compile(gather_crops, dynamic=True)  # type: ignore[return-value]


def compiled_warp_supported(device: torch.device) -> bool:
    """Whether compiled scorers may cut crops with the compiled :func:`gather_crops` on ``device``.

    Inductor's CPU code for it is right with AVX512 kernels. Held to AVX2 kernels
    (``ATEN_CPU_CAPABILITY=avx2``, which is what an AVX2-only CPU runs) it cut wrong crops and then
    aborted the process on an index check (torch 2.14); there ``roi_align`` cuts the crops, and
    the members are still compiled.
    """
    return device.type == "cuda" or avx512_kernels()


def _freezing(enabled: bool) -> contextlib.AbstractContextManager[object]:
    """Inductor's freezing, switched on around compiled calls: it is read when a graph compiles."""
    if not enabled:
        return contextlib.nullcontext()
    import torch._inductor.config as inductor_config  # private compile settings, only when compiling

    return inductor_config.patch(freezing=True)


def _param_versions(model: nn.Module) -> tuple[int, ...]:
    # In-place updates (optimizer steps, load_state_dict, .copy_) bump a tensor's version counter.
    return tuple(t._version for t in (*model.parameters(), *model.buffers()))


class _ScoringMember:
    """One ensemble member: the caller's model, the copy that runs, and how to run it."""

    def __init__(self, source: nn.Module, device: torch.device, channels_last: bool, compile: bool, mode: str | None) -> None:
        self.source = source
        self.device = device
        self.channels_last = channels_last
        self.compile = compile
        self.mode = mode
        self.versions: tuple[int, ...] = ()
        self.model: nn.Module = source
        self.forward: Forward = source
        self._forward_features: FeatureForward | None = None
        self.refresh()

    def refresh(self) -> None:
        """Take a fresh copy of the source model (and compile it, lazily, on the first batch)."""
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        model = copy.deepcopy(self.source).eval().to(device=self.device, memory_format=memory_format)
        for p in model.parameters():
            p.requires_grad_(False)
        self.versions = _param_versions(self.source)
        self.model = model
        self.forward = _compile_member(model, self.mode) if self.compile else model
        self._forward_features = None

    @property
    def forward_features(self) -> FeatureForward:
        """``(B, 3, S, S)`` -> logits ``(B, C + 1)`` and pooled features ``(B, D)``, in one pass.

        Built on first use, so that members scored without features never compile it.
        """
        if self._forward_features is None:
            if not callable(getattr(self.model, "forward_with_features", None)):
                raise TypeError(f"{type(self.model).__name__} has no forward_with_features(): it cannot give pooled features")
            with_features = _WithFeatures(self.model)
            self._forward_features = _compile_member(with_features, self.mode) if self.compile else with_features  # type: ignore[assignment]
        return self._forward_features  # type: ignore[return-value]

    def ensure_current(self) -> None:
        if _param_versions(self.source) != self.versions:
            logger.info("a scored model changed since it was copied: copying%s it again", " and compiling" if self.compile else "")
            self.refresh()


def default_batch_size(device: torch.device, crop_size: int = 224, width: float = 1.0) -> int:
    """Crops per forward pass: 128 on a GPU; on the CPU as many as hold the activations of 16
    full-width 224 px crops, ``16 * (224 / crop_size)^2 / width`` within [16, 256].

    16 is the CPU's best for the paper's network (a small batch's activations stay in cache);
    a narrow network on small crops needs larger batches to keep the cores busy (the
    ``bccd_cpu.yaml`` members, width 0.25 at 96 px, score about twice as fast at 128 as at 16).
    """
    if device.type != "cpu":
        return 128
    return int(min(256, max(16, round(16 * (224 / crop_size) ** 2 / max(width, 1e-3)))))


class CropScorer:
    """Averaged softmax probabilities of an ensemble over warped crops.

    ``scorer(crops)`` (or :meth:`score`) scores crops that are already cut and normalised;
    :meth:`score_boxes` warps and scores proposals batch by batch. Both return ``(K, C + 1)``
    float32 probabilities on ``device``, the mean over members of each member's softmax.

    Args:
        models: the ensemble members, each mapping ``(B, 3, S, S)`` to logits ``(B, C + 1)``
            in eval mode (e.g. :class:`classifiers.inception.GoogLeNet`); for
            :meth:`score` with features they also need ``forward_with_features`` and
            ``num_features``. They are copied; the originals are left as they are (mode,
            device, memory format).
        device: where to score: a torch device or ``"auto"``/``"cpu"``/``"cuda"``.
        batch_size: crops per forward pass; None: :func:`default_batch_size` of a full-width
            224 px network (16 on the CPU, 128 on a GPU).
        compile: run each member through ``torch.compile`` (it pays on large networks and
            large jobs, not on narrow members).
        compile_mode: ``mode`` for ``torch.compile`` (None: its default).
        freeze: with ``compile``, let inductor fold the weights in as constants (freezing).
        bf16: bfloat16 autocast; None: where :func:`detection.core.devices.bf16_supported` says it is
            native. True forces it even where it is emulated (slow).
        channels_last: run convolutions in the channels_last memory format.
    """

    def __init__(
        self,
        models: Sequence[nn.Module],
        device: torch.device | str = "auto",
        batch_size: int | None = None,
        compile: bool = False,
        compile_mode: str | None = None,
        freeze: bool = False,
        bf16: bool | None = None,
        channels_last: bool = True,
    ) -> None:
        if not models:
            raise ValueError("CropScorer needs at least one model")
        self.device = device if isinstance(device, torch.device) else resolve_device(device)
        if batch_size is None:
            batch_size = default_batch_size(self.device)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.compile = compile
        self.freeze = compile and freeze
        self.bf16 = bf16_supported(self.device) if bf16 is None else bf16
        self.channels_last = channels_last
        if compile:
            # Every member is a new instance behind the same forward code, and dynamo keeps one
            # cache entry per instance: let the whole ensemble in before it falls back to eager.
            import torch._dynamo.config as dynamo_config  # private compile settings, only when compiling

            dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 2 * len(models) + 8)
        self.members = [_ScoringMember(m, self.device, channels_last, compile, compile_mode) for m in models]
        self._warp: Callable[..., Tensor] | None = None

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    def _batch_member_outputs(self, batch: Tensor, with_features: bool) -> tuple[Tensor, list[Tensor]]:
        """``(B, 3, S, S)`` on the device -> each member's softmax ``(M, B, C + 1)`` float32 and,
        with ``with_features``, each member's pooled features ``(B, D_m)`` float32 (else ``[]``).

        The features come from the same forward pass as the probabilities, which equal those of
        a pass without features.
        """
        count = len(batch)
        if self.compile and count < self.batch_size:
            # Compiled members keep one static shape: pad the last batch rather than recompile.
            batch = torch.cat([batch, batch.new_zeros((self.batch_size - count, *batch.shape[1:]))])
        if not self.bf16:
            # Without autocast the convolutions need inputs in the weights' dtype.
            batch = batch.float()
        batch = batch.contiguous(memory_format=self.memory_format)
        probabilities, features = [], []
        # torch.autocast, not detection.core.devices.autocast: an explicit bf16=True must hold even
        # where bfloat16 is emulated (the benchmark measures it there).
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16), _freezing(self.freeze):
            for member in self.members:
                if with_features:
                    logits, pooled = member.forward_features(batch)
                    features.append(pooled[:count].float())
                else:
                    logits = member.forward(batch)
                probabilities.append(F.softmax(logits[:count].float(), dim=1))
        return torch.stack(probabilities), features

    def __call__(self, crops: Tensor) -> Tensor:
        return self.score(crops)

    @torch.inference_mode()
    def score(self, crops: Tensor, per_member: bool = False, with_features: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Mean softmax over members: crops ``(K, 3, S, S)`` (normalised) -> ``(K, C + 1)`` float32.

        ``per_member=True`` keeps the members apart: ``(M, K, C + 1)``. ``with_features=True``
        returns ``(M, K, C + 1)`` and each member's pooled features ``(K, D_m)`` from the same
        pass (the input of its final linear layer, ``GoogLeNet.forward_with_features``). The
        crops may live anywhere; each batch moves to the device, and the result is there.
        """
        return self._result(self._run(self._slices(crops), _side(crops), with_features), per_member, with_features)

    @torch.inference_mode()
    def score_boxes(
        self,
        images: Sequence[ImageLike],
        boxes_per_image: Sequence[BoxesLike],
        size: int = RCNN_SIZE,
        padding: int | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        sampling_ratio: int = 1,
        per_member: bool = False,
        with_features: bool = False,
    ) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Warp and score every box of every image, a batch of crops at a time.

        The images go to the device once (:func:`classifiers.crops.images_to_canvas`); each batch
        of crops is cut in one call (see :meth:`_cut`) and scored, so the crops of all boxes
        never exist at once. Geometry as in :func:`classifiers.crops.warp_crops`; results as in
        :meth:`score`, ``K = sum_i B_i``, image-major, box order kept.
        """
        batches = self._box_batches(images, boxes_per_image, size, padding, mean, std, sampling_ratio)
        return self._result(self._run(batches, size, with_features), per_member, with_features)

    @staticmethod
    def _result(outputs: tuple[Tensor, list[Tensor]], per_member: bool, with_features: bool) -> Tensor | tuple[Tensor, list[Tensor]]:
        probabilities, features = outputs
        if with_features:
            return probabilities, features
        return probabilities if per_member else probabilities.mean(dim=0)

    @staticmethod
    def _num_features(model: nn.Module) -> int:
        """Width of a model's pooled features, for an empty result."""
        if not hasattr(model, "num_features"):
            raise TypeError(f"{type(model).__name__} has no num_features: it cannot give pooled features")
        return int(model.num_features)  # type: ignore[arg-type]

    def _slices(self, crops: Tensor) -> Iterator[Tensor]:
        """Ready crops ``(K, 3, S, S)``, ``batch_size`` at a time, on the device."""
        for start in range(0, len(crops), self.batch_size):
            yield crops[start : start + self.batch_size].to(self.device, non_blocking=True)

    def _box_batches(
        self,
        images: Sequence[ImageLike],
        boxes_per_image: Sequence[BoxesLike],
        size: int,
        padding: int | None,
        mean: Sequence[float],
        std: Sequence[float],
        sampling_ratio: int,
    ) -> Iterator[Tensor]:
        """The crops of every box of every image, a batch at a time (images on the device once)."""
        if len(images) != len(boxes_per_image):
            raise ValueError(f"{len(images)} images but {len(boxes_per_image)} box lists")
        canvas = images_to_canvas(images, mean, std, self.device)
        rois = make_rois(boxes_per_image, size, padding, self.device)
        return self._cut(canvas, rois, size, sampling_ratio)

    def _run(self, batches: Iterable[Tensor], side: int, with_features: bool) -> tuple[Tensor, list[Tensor]]:
        """Score batches of crops: per-member probabilities ``(M, K, C + 1)`` and, with
        ``with_features``, M pooled-feature tensors ``(K, D_m)`` (else ``[]``)."""
        for member in self.members:
            member.ensure_current()
        outputs = [self._batch_member_outputs(batch, with_features) for batch in batches]
        if outputs:
            probabilities = torch.cat([p for p, _ in outputs], dim=1)
        else:
            probabilities = torch.zeros((len(self.members), 0, self._num_outputs(side)), dtype=torch.float32, device=self.device)
        if not with_features:
            return probabilities, []
        if outputs:
            features = [torch.cat([f[m] for _, f in outputs]) for m in range(len(self.members))]
        else:
            features = [torch.zeros((0, self._num_features(member.model)), device=self.device) for member in self.members]
        return probabilities, features

    def _cut(self, canvas: Tensor, rois: Tensor, size: int, sampling_ratio: int) -> Iterator[Tensor]:
        """The crops of ``rois`` ``(K, 5)``, ``batch_size`` at a time, in the members' dtype and layout.

        Compiled scorers cut point-sampled crops with a compiled :func:`gather_crops` (one fused
        loop writing the network's dtype and layout directly: on a CPU the eager ``roi_align``
        and the copies after it cost about as much as a compiled forward pass) where
        :func:`compiled_warp_supported`; the rest with :func:`crop_rois`.
        """
        out_dtype = torch.bfloat16 if self.bf16 and (self.device.type == "cuda" or self.compile) else torch.float32
        if self.compile and self.channels_last and sampling_ratio == 1 and len(rois) and compiled_warp_supported(self.device):
            if self._warp is None:
                self._warp = _compile_warp()
            pixels, canvas_hw = canvas_pixels(canvas)
            for start in range(0, len(rois), self.batch_size):
                yield self._warp(pixels, canvas_hw, rois[start : start + self.batch_size], size, out_dtype)
            return
        for start in range(0, len(rois), self.batch_size):
            yield crop_rois(canvas, rois[start : start + self.batch_size], size, sampling_ratio, out_dtype, self.channels_last)

    def _num_outputs(self, side: int) -> int:
        """Outputs of the ensemble, for an empty result: the model's config, else one eager probe."""
        config = getattr(self.members[0].model, "config", None)
        if config is not None and hasattr(config, "num_classes"):
            return int(config.num_classes)
        probe = torch.zeros((1, 3, side, side), device=self.device).contiguous(memory_format=self.memory_format)
        return int(self.members[0].model(probe).shape[1])


def _side(crops: Tensor) -> int:
    """Crop side of a ``(K, 3, S, S)`` batch, for the shape of an empty result."""
    return crops.shape[-1] if crops.dim() == 4 else RCNN_SIZE
