"""Crops per second of the region classifier, whole path: warp + normalise + forward + softmax.

One ensemble member (the full-width paper GoogLeNet, ``GoogLeNetConfig.paper(num_classes=201)``,
or ``--config torchvision`` for the batch-norm layout) scores ``--boxes`` random proposals on each
of ``--images`` real photographs (scikit-learn's sample images, cut and turned to vary the sizes):

* ``naive``: R-CNN as first written: each crop warped on the CPU by ``cv2.warpAffine`` (float32,
  mean-colour border), normalised, stacked in batches of 32, a float32 NCHW model.
* ``warp only``: the warps alone, naive per-crop OpenCV vs the batched ``roi_align`` of
  :mod:`classifiers.crops`, to show where the time is not.
* ``ours``: :meth:`classifiers.scoring.CropScorer.score_boxes`: the images go to the device once,
  each batch of crops is cut by one ``roi_align`` call, the model runs in channels_last under
  ``torch.inference_mode``; eager float32 over a sweep of batch sizes, bfloat16 autocast (on a CPU
  without native bfloat16 on only ``--bf16-crops`` crops: it is very slow there), and
  ``torch.compile`` (static batch shape; ``--compile-frozen`` adds inductor freezing), compile
  time reported apart and not in the rate, timed against the best eager batch once more. The
  compiled scorer also cuts its crops with a compiled :func:`classifiers.crops.gather_crops`
  (bfloat16, channels_last, straight from the canvas) instead of ``roi_align``, where
  :func:`classifiers.scoring.compiled_warp_supported` (not with AVX2 kernels); the label says which.

The cases run in alternating rounds and each keeps its best round, so a busy spell on a shared
machine does not land on one case alone. GFLOP/s counts 2 FLOP per multiply-add of
:func:`classifiers.inception_cost.count_params_and_macs` and is set against the best rate of a large
``torch.mm`` in the same dtype (in float32 for bfloat16 where bfloat16 is emulated: the emulated
``mm`` is a slow reference path, no meaningful peak).

    python benchmarks/bench_scoring.py --size 224 --boxes 500 --images 4 --repeat 3 --device auto

On a 2-core CPU the defaults take well over half an hour; ``--boxes 32`` (128 crops) runs in
about six minutes there.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from timing import Case, run_rounds  # beside this script

from classifiers.crops import context_boxes, warp_crops
from classifiers.inception import IMAGENET_MEAN, IMAGENET_STD, GoogLeNet, GoogLeNetConfig
from classifiers.inception_cost import forward_gflop
from classifiers.scoring import CropScorer, compiled_warp_supported
from detection.core.devices import bf16_supported, matmul_gflops, resolve_device

NAIVE_BATCH = 32


def _scoring(scorer: CropScorer, images: list[np.ndarray], boxes: list[np.ndarray], size: int) -> Callable[[], object]:
    # .cpu() waits for the device and pays for the scores' trip back, as a caller would.
    return lambda: scorer.score_boxes(images, boxes, size).cpu()


def load_images(count: int) -> list[np.ndarray]:
    """``count`` uint8 RGB photographs of a few different sizes."""
    from sklearn.datasets import load_sample_image

    china, flower = load_sample_image("china.jpg"), load_sample_image("flower.jpg")  # 427x640 each
    variants = [china, flower, np.ascontiguousarray(china[60:360, 100:500]), np.ascontiguousarray(flower.transpose(1, 0, 2))]
    return [variants[i % len(variants)] for i in range(count)]


def random_proposals(image: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    """Proposal-like boxes inside the image: log-uniform sizes from 16 px to the whole image."""
    height, width = image.shape[:2]
    area = np.exp(rng.uniform(np.log(16 * 16), np.log(width * height), count))
    aspect = np.exp(rng.uniform(np.log(1 / 3), np.log(3), count))
    w = np.minimum(np.sqrt(area * aspect), width)
    h = np.minimum(np.sqrt(area / aspect), height)
    x1 = rng.uniform(0, width - w)
    y1 = rng.uniform(0, height - h)
    return np.stack([x1, y1, x1 + w, y1 + h], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The naive path


def naive_warp(image_f32: np.ndarray, box: np.ndarray, size: int) -> np.ndarray:
    """One crop ``(3, S, S)`` R-CNN style: context box, cv2.warpAffine, normalise (float32)."""
    x1, y1, x2, y2 = context_boxes(box[None], size)[0].tolist()
    sx, sy = (x2 - x1) / size, (y2 - y1) / size
    matrix = np.array([[sx, 0.0, x1 + 0.5 * sx - 0.5], [0.0, sy, y1 + 0.5 * sy - 0.5]])
    warped = cv2.warpAffine(
        image_f32, matrix, (size, size), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
        borderMode=cv2.BORDER_CONSTANT, borderValue=IMAGENET_MEAN,
    )
    return ((warped - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)).transpose(2, 0, 1)


def naive_crops(images: list[np.ndarray], boxes: list[np.ndarray], size: int) -> list[np.ndarray]:
    crops = []
    for image, image_boxes in zip(images, boxes):
        image_f32 = image.astype(np.float32) / 255.0
        crops.extend(naive_warp(image_f32, box, size) for box in image_boxes)
    return crops


def naive_score(model: torch.nn.Module, images: list[np.ndarray], boxes: list[np.ndarray], size: int, device: torch.device) -> torch.Tensor:
    outputs = []
    pending: list[np.ndarray] = []

    def flush() -> None:
        batch = torch.from_numpy(np.stack(pending)).to(device)
        outputs.append(F.softmax(model(batch), dim=1).cpu())
        pending.clear()

    with torch.inference_mode():
        for image, image_boxes in zip(images, boxes):
            image_f32 = image.astype(np.float32) / 255.0
            for box in image_boxes:
                pending.append(naive_warp(image_f32, box, size))
                if len(pending) == NAIVE_BATCH:
                    flush()
        if pending:
            flush()
    return torch.cat(outputs)


# ---------------------------------------------------------------------------------------------


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--boxes", type=int, default=500, help="proposals per image")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--config", choices=("paper", "torchvision"), default="paper")
    parser.add_argument("--batches", default="16,32,64,128", help="batch sizes of the eager sweep")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (CPU)")
    parser.add_argument("--bf16-crops", type=int, default=32, help="crops for bf16 on a CPU without native bf16")
    parser.add_argument("--compile-batch", type=int, default=0, help="batch for torch.compile; 0: best eager batch, -1: skip")
    parser.add_argument("--compile-mode", default=None, help="torch.compile mode, e.g. max-autotune-no-cudagraphs")
    parser.add_argument("--compile-frozen", action="store_true", help="also time torch.compile with inductor freezing")
    parser.add_argument("--cold-compile", action="store_true", help="bypass inductor's on-disk caches: true compile times")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


@dataclass
class _Bench:
    """The inputs every case shares, and the best matrix-multiply rates seen so far."""

    args: argparse.Namespace
    device: torch.device
    images: list[np.ndarray]
    boxes: list[np.ndarray]
    model: GoogLeNet
    gflop: float
    native_bf16: bool
    peak: dict[torch.dtype, float] = field(default_factory=lambda: {torch.float32: 0.0, torch.bfloat16: 0.0})

    @property
    def total(self) -> int:
        return sum(len(b) for b in self.boxes)

    def measure_peak(self) -> None:
        """Measured before, between and after the phases, the best kept (as the cases alternate rounds)."""
        for dtype in self.peak:
            self.peak[dtype] = max(self.peak[dtype], matmul_gflops(dtype, self.device, self.args.repeat))


def _setup(args: argparse.Namespace) -> _Bench:
    """Threads, images, proposals and the model; prints what is measured."""
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    if args.cold_compile:
        import torch._inductor.config as inductor_config  # only where asked: a private switch

        inductor_config.force_disable_caches = True
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    images = load_images(args.images)
    boxes = [random_proposals(image, args.boxes, rng) for image in images]
    factory = GoogLeNetConfig.paper if args.config == "paper" else GoogLeNetConfig.torchvision
    config = factory(num_classes=201, input_size=args.size)
    gflop = forward_gflop(config, args.size)
    bench = _Bench(args, device, images, boxes, GoogLeNet(config).eval().to(device), gflop, bf16_supported(device))
    print(f"load average at the start: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores")
    print(f"device {device}; torch {torch.__version__}; {platform.processor() or platform.machine()}; "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}; threads {torch.get_num_threads()} of {os.cpu_count()} cores; "
          f"native bf16: {bench.native_bf16}")
    print(f"model GoogLeNetConfig.{args.config}(num_classes=201), {gflop:.3f} GFLOP per {args.size}x{args.size} crop "
          f"({gflop / 2:.3f} G multiply-adds); {len(images)} images "
          f"({', '.join(f'{im.shape[1]}x{im.shape[0]}' for im in images)}), {bench.total} proposals")
    return bench


def _eager_cases(bench: _Bench) -> tuple[list[Case], dict[int, Case]]:
    """Phase 1: the warps alone, the naive loop, the eager batch sweep, NCHW, bf16 autocast."""
    args, device, images, boxes, total, model = bench.args, bench.device, bench.images, bench.boxes, bench.total, bench.model
    cases = [
        Case("warp only: per-crop cv2.warpAffine", 1, total, None, lambda: naive_crops(images, boxes, args.size)),
        Case("warp only: batched roi_align", total, total, None, lambda: warp_crops(images, boxes, args.size, device=device)),
    ]
    naive_model = GoogLeNet(model.config).to(device).eval()
    naive_model.load_state_dict(model.state_dict())
    naive_score(naive_model, images, [boxes[0][:2]], args.size, device)  # warm-up: library set-up
    cases.append(Case("(a) naive: cv2 per crop, fp32 NCHW", NAIVE_BATCH, total, torch.float32, lambda: naive_score(naive_model, images, boxes, args.size, device)))
    eager: dict[int, Case] = {}
    for batch in (int(b) for b in args.batches.split(",")):
        eager[batch] = Case("(b) ours eager fp32 channels_last", batch, total, torch.float32, _warmed(CropScorer([model], device, batch_size=batch, bf16=False), bench, boxes))
        cases.append(eager[batch])
    # The same eager path in NCHW, at the first batch size of the sweep: what channels_last buys.
    first_batch = next(iter(eager))
    nchw = CropScorer([model], device, batch_size=first_batch, bf16=False, channels_last=False)
    cases.append(Case("(b) ours eager fp32 NCHW", first_batch, total, torch.float32, _warmed(nchw, bench, boxes)))
    # bfloat16 autocast: every crop where native (at the scorer's default batch: 16 on a CPU,
    # where small batches stay in cache), a sample where emulated (it is very slow there).
    bf16_boxes = boxes if bench.native_bf16 else _first(boxes, args.bf16_crops)
    bf16_count = sum(len(b) for b in bf16_boxes)
    bf16_batch = CropScorer([model], device).batch_size if bench.native_bf16 else min(min(eager), bf16_count)
    label = "(b) ours eager bf16 autocast" + ("" if bench.native_bf16 else " (emulated)")
    cases.append(Case(label, bf16_batch, bf16_count, torch.bfloat16, _warmed(CropScorer([model], device, batch_size=bf16_batch, bf16=True), bench, bf16_boxes)))
    return cases, eager


def _warmed(scorer: CropScorer, bench: _Bench, boxes: list[np.ndarray]) -> Callable[[], object]:
    """``scorer`` after one small call (library set-up), as a timed case's run."""
    scorer.score_boxes(bench.images[:1], [bench.boxes[0][:2]], bench.args.size)
    return _scoring(scorer, bench.images, boxes, bench.args.size)


def _compiled_cases(bench: _Bench, best_eager: Case) -> tuple[list[Case], dict[str, float], int]:
    """Phase 2: torch.compile at one batch size (each new shape compiles again), timed against
    the best eager batch once more so that the two share the same machine conditions."""
    args = bench.args
    compile_batch = best_eager.batch if args.compile_batch == 0 else args.compile_batch
    compile_seconds: dict[str, float] = {}
    if compile_batch <= 0:
        return [], compile_seconds, compile_batch
    dtype = torch.bfloat16 if bench.native_bf16 else torch.float32
    name = "bf16" if dtype == torch.bfloat16 else "fp32"
    cases = [Case(best_eager.method + " (again)", best_eager.batch, bench.total, torch.float32, best_eager.run)]
    # Frozen first: dynamo would hand a later frozen scorer of the same model class the graph
    # an unfrozen one compiled before it, so that the two would time the same code.
    for freeze in (True, False) if args.compile_frozen else (False,):
        warp = "" if compiled_warp_supported(bench.device) else ", roi_align warp"
        label = f"(b) ours compiled{' + frozen' if freeze else ''} {name}{warp} {args.compile_mode or ''}".rstrip()
        scorer = CropScorer([bench.model], bench.device, batch_size=compile_batch, compile=True, compile_mode=args.compile_mode, freeze=freeze)
        print(f"compiling {label} at batch {compile_batch} ...", flush=True)
        start = time.perf_counter()
        scorer.score_boxes(bench.images[:1], [bench.boxes[0][:1]], args.size).cpu()  # compiles (padded to the batch)
        compile_seconds[label] = time.perf_counter() - start
        cases.append(Case(label, compile_batch, bench.total, dtype, _scoring(scorer, bench.images, bench.boxes, args.size)))
    print("phase 2: compiled vs best eager", flush=True)
    run_rounds(cases, args.repeat, bench.device)
    bench.measure_peak()
    return cases, compile_seconds, compile_batch


def _print_table(bench: _Bench, cases: list[Case], compile_seconds: dict[str, float], compile_batch: int) -> None:
    peak, gflop = bench.peak, bench.gflop
    print(f"torch.mm peak (best of three times): float32 {peak[torch.float32]:.1f} GFLOP/s, bfloat16 {peak[torch.bfloat16]:.1f} GFLOP/s")
    naive_rate = next(case.rate for case in cases if case.method.startswith("(a)"))
    print()
    header = f"{'method':<52} {'batch':>6} {'crops':>6} {'best s':>8} {'crops/s':>9} {'GFLOP/s':>8} {'% mm peak':>9} {'vs naive':>8}"
    print(header)
    print("-" * len(header))
    for case in cases:
        rate = case.rate
        achieved = f"{rate * gflop:8.1f}" if case.dtype else f"{'-':>8}"
        share = f"{'-':>9}"
        if case.dtype:
            reference = peak[case.dtype] if case.dtype == torch.float32 or bench.native_bf16 else peak[torch.float32]
            share = f"{100 * rate * gflop / reference:8.0f}%"
        speedup = f"{rate / naive_rate:7.2f}x" if case.dtype else f"{'-':>8}"
        print(f"{case.method:<52} {str(case.batch):>6} {case.items:>6} {case.best:8.2f} {rate:9.2f} {achieved} {share} {speedup}")
    for label, seconds in compile_seconds.items():
        cache = "caches off" if bench.args.cold_compile else "inductor's on-disk caches may hold it from an earlier run: see --cold-compile"
        print(f"compile time of {label!r} (first call, batch {compile_batch}): {seconds:.1f} s ({cache})")
    print("rates are per ensemble member; an ensemble of n members scores n times slower.")
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (1 min) on {os.cpu_count()} cores")


def main(argv: list[str] | None = None) -> None:
    bench = _setup(_arguments(argv))
    bench.measure_peak()
    cases, eager = _eager_cases(bench)
    print("phase 1: warps, naive, eager batch sweep, bf16", flush=True)
    run_rounds(cases, bench.args.repeat, bench.device)
    bench.measure_peak()
    compiled, compile_seconds, compile_batch = _compiled_cases(bench, max(eager.values(), key=lambda case: case.rate))
    _print_table(bench, cases + compiled, compile_seconds, compile_batch)


def _first(boxes: list[np.ndarray], count: int) -> list[np.ndarray]:
    """The first ``count`` boxes, taken image by image."""
    out = []
    for image_boxes in boxes:
        take = max(0, min(len(image_boxes), count - sum(len(b) for b in out)))
        out.append(image_boxes[:take])
    return out


if __name__ == "__main__":
    main()
