"""Seconds per image of Selective Search through `rcnn propose` against a plain OpenCV loop.

On the same images:

- plain OpenCV: read the image, resize it as our wrapper does (longer side <= ``--max-side``,
  INTER_AREA), one ``switchToSelectiveSearchFast()`` call, no ranking, nothing stored;
- ``propose --method ss`` (``proposals.propose.run_proposals``, the function the CLI runs) at
  superpixel scale 1, the same recipe, with 1 and 2 worker processes, into a fresh store;
- the same store run again (warm): it must compute nothing;
- for reference, superpixel scale 2 (the paper's setting) with 1 worker.

Worker start-up (spawning processes that import torch and read the dataset) is included in the
2-worker time: it is what a user waits for. Use enough images (>= 16) that it is amortised.

    python benchmarks/bench_proposals.py --data synthetic:16:0
    python benchmarks/bench_proposals.py --data voc:../shared/data/bccd/BCCD:test
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from detection.data.datasets import load_dataset
from detection.data.records import Dataset
from proposals.propose import ProposalConfig, run_proposals
from proposals.selective_search import SelectiveSearchConfig, _resize_for_segmentation, configure_opencv_threads, opencv_selective_search


def plain_opencv_loop(dataset: Dataset, max_side: int) -> tuple[float, float]:
    """Seconds per image and boxes per image of a bare OpenCV fast-mode loop."""
    started = time.perf_counter()
    counts = []
    for record in dataset:
        image = _resize_for_segmentation(dataset.load_image(record), max_side)
        counts.append(len(opencv_selective_search(image, "fast")))
    return (time.perf_counter() - started) / len(dataset), float(np.mean(counts))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="synthetic:16:0")
    parser.add_argument("--max-side", type=int, default=500)
    args = parser.parse_args()
    dataset = load_dataset(args.data)
    configure_opencv_threads(1)  # one core per process everywhere, so the rows compare like with like
    import torch

    torch.set_num_threads(1)
    print(f"machine: {platform.machine()} {platform.processor() or ''} {os.cpu_count()} cores, OpenCV {cv2.__version__}")
    print(f"data: {args.data}, {len(dataset)} images, max side {args.max_side}\n")
    rows = []
    seconds, boxes = plain_opencv_loop(dataset, args.max_side)
    rows.append(("plain OpenCV fast, 1 process", seconds, boxes))
    base = ProposalConfig(method="ss", selective_search=SelectiveSearchConfig(mode="fast", superpixel_scale=1.0, max_side=args.max_side, min_side=0.0))
    with tempfile.TemporaryDirectory() as tmp:
        for workers in (1, 2):
            summary = run_proposals(dataset, base, Path(tmp) / f"w{workers}", workers=workers, progress=False)
            rows.append((f"propose --method ss (scale 1), {workers} worker(s)", summary.seconds_per_image, summary.boxes_per_image))
        started = time.perf_counter()
        summary = run_proposals(dataset, base, Path(tmp) / "w1", workers=1, progress=False)
        rows.append((f"warm rerun (computed {summary.computed} images)", (time.perf_counter() - started) / len(dataset), summary.boxes_per_image))
        paper = dataclasses.replace(base, selective_search=dataclasses.replace(base.selective_search, superpixel_scale=2.0))
        summary = run_proposals(dataset, paper, Path(tmp) / "x2", workers=1, progress=False)
        rows.append(("propose --method ss (scale 2), 1 worker", summary.seconds_per_image, summary.boxes_per_image))
    reference = rows[0][1]
    print(f"{'method':<48} {'s/image':>9} {'vs plain':>9} {'boxes/image':>12}")
    for name, seconds, boxes in rows:
        print(f"{name:<48} {seconds:>9.3f} {seconds / reference:>8.2f}x {boxes:>12.1f}")
    one, two = rows[1][1], rows[2][1]
    print(f"\n2 workers vs 1: {one / two:.2f}x faster")


if __name__ == "__main__":
    main()
