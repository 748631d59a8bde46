"""Counted warnings for data that is faulty but still usable.

Readers meet real faults (a box outside its image, a single-pixel box, an unknown class name).
Where the data can still be used, the fault becomes a counted warning: the first few of each
kind are logged with the file that has them, all are counted, and a one-line summary closes the
read. Faults that make the data unusable raise :class:`DataError` naming the file instead.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

__all__ = ["DataError", "WarningTally"]


class DataError(ValueError):
    """Input data that cannot be used; the message names the file and the fault."""

    def __init__(self, path: str | Path, fault: str) -> None:
        self.path = str(path)
        self.fault = fault
        super().__init__(f"{path}: {fault}")


class WarningTally:
    """Counts warnings by kind and logs the first ``show`` examples of each kind."""

    def __init__(self, source: str, logger: logging.Logger | None = None, show: int = 3) -> None:
        self.source = source
        self.logger = logger or logging.getLogger("detection.data")
        self.show = show
        self.counts: Counter[str] = Counter()

    def warn(self, kind: str, where: str | Path, detail: str = "") -> None:
        """Record one fault of ``kind`` found in ``where`` (a file, or file plus object)."""
        self.counts[kind] += 1
        if self.counts[kind] <= self.show:
            self.logger.warning("%s: %s%s", where, kind, f" ({detail})" if detail else "")
        elif self.counts[kind] == self.show + 1:
            self.logger.warning("further '%s' warnings are counted, not shown", kind)

    def count(self, kind: str, number: int = 1) -> None:
        """Count ``number`` faults of ``kind`` that were logged where they were found (e.g. a
        truncated image, named once by :mod:`detection.data.images`): they reach the summary only."""
        if number > 0:
            self.counts[kind] += number

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        """One line, e.g. ``voc:BCCD: 2 warnings: degenerate box dropped x2``; empty when clean."""
        if not self.counts:
            return ""
        parts = ", ".join(f"{kind} x{count}" for kind, count in sorted(self.counts.items()))
        noun = "warning" if self.total == 1 else "warnings"
        return f"{self.source}: {self.total} {noun}: {parts}"

    def log_summary(self) -> None:
        if self.counts:
            self.logger.warning(self.summary())
