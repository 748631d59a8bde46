"""Training speed: windows/s of one region-classifier member's step, images/s of MultiBox's step.

At a preset's sizes (``--config``: the ``classifier``/``train`` and ``multibox`` sections), the
training step of :mod:`classifiers.train` (forward with the auxiliary heads, loss, backward,
SGD step) runs on one fixed batch of random crops, the same batch for every path, in alternating
rounds (:mod:`timing`): eager float32 NCHW, eager channels_last float32, eager channels_last
bfloat16 autocast (what training runs where bfloat16 is native) and, with ``--compile``, the
network compiled with ``torch.compile``. The crop warp of a batch (what ``classifiers.train``
does before each step) is timed on its own, both ways: normalised images on a canvas cut by
``roi_align`` (training on a GPU), and one OpenCV warp per window (training on a CPU). GFLOP/s
count a training step as three forward passes (the backward pass costs about two) from Table 1's
multiply-adds at the preset's width and crop size; "% peak" is against a square ``torch.mm`` in
the case's dtype.

    python benchmarks/bench_training.py --config configs/bccd_cpu.yaml [--compile]
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
from collections.abc import Callable

import numpy as np
import torch
from timing import Case, run_rounds  # beside this script

from classifiers.crops import warp_crops, warp_crops_host
from classifiers.inception_cost import training_gflop
from classifiers.region_classifier import build_region_classifier
from classifiers.train import TrainConfig, train_step
from detection.config import Config, load_config
from detection.core.devices import autocast, bf16_supported, compute_dtype, matmul_gflops, resolve_device
from proposals.multibox import MultiBox, backbone_config, multibox_loss


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="configs/bccd_cpu.yaml", help="preset whose sizes are timed")
    parser.add_argument("--classes", type=int, default=3, help="object classes (BCCD: 3)")
    parser.add_argument("--steps", type=int, default=4, help="training steps per timed run")
    parser.add_argument("--repeat", type=int, default=3, help="rounds")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--compile", action="store_true", help="also time the step through torch.compile (compiles for minutes)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _member_steps(model: torch.nn.Module, train: TrainConfig, aux_weight: float, crops: torch.Tensor, labels: torch.Tensor, device: torch.device, steps: int, bf16: bool) -> Callable[[], object]:
    """``steps`` training steps of a private copy of ``model`` on one batch (its own optimizer)."""
    model = copy.deepcopy(model)
    optimizer = torch.optim.SGD(model.parameters(), lr=train.lr, momentum=train.momentum, weight_decay=train.weight_decay)
    # train_step autocasts on devices where bfloat16 is native; "meta" is none, so it runs float32.
    autocast_device = device if bf16 else torch.device("meta")

    def run() -> None:
        for _ in range(steps):
            train_step(model, optimizer, crops, labels, aux_weight, autocast_device)

    run()  # warm-up (and, compiled, the compile)
    return run


def _member_cases(args: argparse.Namespace, config: Config, device: torch.device) -> tuple[list[Case], float]:
    """The member's training step on one fixed batch, each path; returns the cases and GFLOP per window."""
    classifier, train = config.classifier, config.train
    size, batch = classifier.crop_size, train.batch_size
    torch.manual_seed(args.seed)
    model = build_region_classifier(classifier, args.classes).to(device)
    gflop = training_gflop(model.config, size)
    crops = torch.randn(batch, 3, size, size, device=device)
    labels = torch.zeros(batch, dtype=torch.int64)
    foreground = int(round(train.fg_fraction * batch))
    labels[:foreground] = torch.randint(1, args.classes + 1, (foreground,))
    labels = labels.to(device)
    last = copy.deepcopy(model).to(memory_format=torch.channels_last)
    crops_last = crops.contiguous(memory_format=torch.channels_last)

    def case(method: str, network: torch.nn.Module, inputs: torch.Tensor, bf16: bool) -> Case:
        run = _member_steps(network, train, model.config.aux_weight, inputs, labels, device, args.steps, bf16)
        return Case(f"member: {method}", batch, batch * args.steps, torch.bfloat16 if bf16 else torch.float32, run)

    cases = [case("eager fp32 NCHW", model, crops, False), case("eager fp32 channels_last", last, crops_last, False)]
    native = bf16_supported(device)
    if native:
        cases.append(case("eager bf16 channels_last (training today)", last, crops_last, True))
    if args.compile:
        cases.append(case(f"compiled {'bf16' if native else 'fp32'} channels_last", torch.compile(copy.deepcopy(last)), crops_last, native))
    return cases, gflop


def _warp_cases(args: argparse.Namespace, config: Config, device: torch.device) -> list[Case]:
    """Cutting one batch's crops (``train.images_per_batch`` 640x480 images, ``batch_size`` windows, half
    of them mirrored): the canvas + ``roi_align`` warp, and on a CPU the host warp training uses there."""
    rng = np.random.default_rng(args.seed)
    train, classifier = config.train, config.classifier
    images = [rng.integers(0, 255, (480, 640, 3), dtype=np.uint8) for _ in range(train.images_per_batch)]
    per_image = -(-train.batch_size // train.images_per_batch)
    boxes = []
    for _ in images:
        x1, y1 = rng.uniform(0, 560, per_image), rng.uniform(0, 400, per_image)
        boxes.append(np.stack([x1, y1, x1 + rng.uniform(16, 160, per_image), y1 + rng.uniform(16, 160, per_image)], 1).astype(np.float32))
    count = per_image * len(images)
    mirror = rng.random(count) < 0.5
    size, padding = classifier.crop_size, classifier.padding()

    def canvas_warp() -> torch.Tensor:
        crops = warp_crops(images, boxes, size, padding, device=device)
        flips = torch.from_numpy(mirror).to(device).view(-1, 1, 1, 1)
        return torch.where(flips, crops.flip(-1), crops).contiguous(memory_format=torch.channels_last)

    cases = [Case("member: crop warp of a batch (canvas + roi_align)", count, count, None, canvas_warp)]
    if device.type == "cpu":
        cases.append(Case("member: crop warp of a batch (host, training's)", count, count, None, lambda: warp_crops_host(images, boxes, size, padding, mirror=mirror)))
    return cases


def _multibox_case(args: argparse.Namespace, config: Config, device: torch.device) -> tuple[Case, float]:
    """MultiBox's training step (today's path) on one fixed batch of random images and boxes."""
    mb = config.multibox
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    priors = rng.uniform(0, 0.5, (mb.num_priors, 2))
    priors = np.concatenate([priors, priors + rng.uniform(0.05, 0.5, (mb.num_priors, 2))], 1).astype(np.float32)
    model = MultiBox(mb, priors).to(device, memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=mb.lr, momentum=mb.momentum, weight_decay=mb.weight_decay)
    images = torch.randn(mb.batch_size, 3, mb.input_size, mb.input_size, device=device).contiguous(memory_format=torch.channels_last)
    gts = [torch.from_numpy(priors[rng.choice(mb.num_priors, 8)]) for _ in range(mb.batch_size)]
    matching = model.priors if mb.matching == "priors" else None
    gflop = training_gflop(backbone_config(mb), mb.input_size)

    def run() -> None:
        for _ in range(args.steps):
            with autocast(device):
                locations, logits = model(images)
            loss, _ = multibox_loss(locations.float(), logits.float(), gts, mb.alpha, matching)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    run()
    dtype = compute_dtype(device)
    return Case("multibox: eager channels_last (training today)", mb.batch_size, mb.batch_size * args.steps, dtype, run), gflop


def _print_table(cases: list[tuple[Case, float]], peak: dict[torch.dtype, float], baseline: dict[str, float]) -> None:
    header = f"{'method':<52} {'batch':>6} {'items/s':>9} {'GFLOP/s':>8} {'% peak':>7} {'vs today':>8}"
    print()
    print(header)
    print("-" * len(header))
    for case, gflop in cases:
        achieved = f"{case.rate * gflop:8.1f}" if case.dtype else f"{'-':>8}"
        share = f"{100 * case.rate * gflop / peak[case.dtype]:6.1f}%" if case.dtype else f"{'-':>7}"
        family = case.method.split(":")[0]
        ratio = f"{case.rate / baseline[family]:7.2f}x" if case.dtype and family in baseline else f"{'-':>8}"
        print(f"{case.method:<52} {case.batch:>6} {case.rate:9.1f} {achieved} {share} {ratio}")


def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    device = resolve_device(args.device)
    torch.set_num_threads(args.threads)
    config = load_config(args.config)
    print(f"device {device}; torch {torch.__version__}; {platform.processor() or platform.machine()}; cpu capability "
          f"{torch.backends.cpu.get_cpu_capability()}; threads {torch.get_num_threads()} of {os.cpu_count()}; native bf16: {bf16_supported(device)}")
    print(f"preset {args.config}: member width {config.classifier.width}, {config.classifier.crop_size} px crops, batch {config.train.batch_size}; "
          f"MultiBox width {config.multibox.backbone.width}, {config.multibox.input_size} px, K={config.multibox.num_priors}, batch {config.multibox.batch_size}")
    peak = {dtype: matmul_gflops(dtype, device, args.repeat) for dtype in (torch.float32, torch.bfloat16)}
    member_cases, member_gflop = _member_cases(args, config, device)
    multibox, multibox_gflop = _multibox_case(args, config, device)
    warps = _warp_cases(args, config, device)
    print(f"member step: {member_gflop:.3f} GFLOP per window; MultiBox step: {multibox_gflop:.3f} GFLOP per image", flush=True)
    cases = member_cases + warps + [multibox]
    run_rounds(cases, args.repeat, device, unit="items/s")
    peak = {dtype: max(rate, matmul_gflops(dtype, device, args.repeat)) for dtype, rate in peak.items()}
    print(f"torch.mm peak: float32 {peak[torch.float32]:.1f} GFLOP/s, bfloat16 {peak[torch.bfloat16]:.1f} GFLOP/s")
    today = next(c for c in member_cases if "today" in c.method) if bf16_supported(device) else member_cases[1]
    print(f"path training takes today on this machine: {today.method.split(': ')[1]}")
    rows = [(c, member_gflop) for c in member_cases] + [(warp, 0.0) for warp in warps] + [(multibox, multibox_gflop)]
    _print_table(rows, peak, {"member": today.rate, "multibox": multibox.rate})


if __name__ == "__main__":
    main()
