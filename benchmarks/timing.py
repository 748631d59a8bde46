"""Timing helpers shared by the speed scripts: cases timed in alternating rounds.

Each case is timed once per round and rounds alternate the cases, so a busy spell on a shared
machine hurts every case a little rather than one case a lot; each keeps its best round. "% of peak" is measured
against :func:`detection.core.devices.matmul_gflops`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from detection.core.devices import best_time


@dataclass
class Case:
    """One timed configuration: ``run`` processes ``items`` items (crops, windows, images)."""

    method: str
    batch: int
    items: int
    dtype: torch.dtype | None  # None: no arithmetic to rate (warp only)
    run: Callable[[], object]
    best: float = float("inf")

    @property
    def rate(self) -> float:
        return self.items / self.best


def run_rounds(cases: list[Case], repeat: int, device: torch.device, unit: str = "crops/s") -> None:
    """Time every case once per round, ``repeat`` rounds; keep each case's best time."""
    for round_index in range(repeat):
        for case in cases:
            case.best = min(case.best, best_time(case.run, 1, device))
        print(f"  round {round_index + 1}/{repeat}: " + ", ".join(f"{c.rate:.1f}" for c in cases) + f" {unit}", flush=True)
