"""Progress display that suits where stderr goes: a bar on a terminal, plain lines in a log.

A tqdm bar redraws itself with carriage returns, which a terminal overwrites but a redirected
log (``rcnn bench detection ... > run.log 2>&1``) keeps, hundreds of kilobytes of them. So
:func:`progress_bar` gives a tqdm bar only when its stream is a terminal; otherwise a stand-in
with the same small interface writes whole lines: one when the stage ends, and one every
``interval`` seconds while a long stage runs. A bar that tqdm would remove when done
(``leave=False``, the per-epoch bars, whose stage logs its own line per epoch) writes no closing
line. Nothing from this project is imported here: only the standard library and tqdm.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import IO, Any

from tqdm import tqdm

__all__ = ["PlainProgress", "progress_bar"]

#: Seconds between the lines a stand-in writes while its stage runs.
LINE_INTERVAL = 60.0


def progress_bar(
    iterable: Iterable[Any] | None = None,
    *,
    total: int | None = None,
    desc: str = "",
    unit: str = "it",
    disable: bool = False,
    leave: bool = True,
    stream: IO[str] | None = None,
    interval: float = LINE_INTERVAL,
) -> Any:
    """A tqdm bar on a terminal (or when disabled), else a :class:`PlainProgress`.

    Takes tqdm's arguments of the same names; ``stream`` defaults to ``sys.stderr`` (tqdm's
    default) and ``interval`` only concerns the stand-in. Both kinds iterate over ``iterable``
    and have ``update``, ``set_postfix`` and ``close``.
    """
    stream = sys.stderr if stream is None else stream
    if disable or _is_terminal(stream):
        return tqdm(iterable, total=total, desc=desc, unit=unit, disable=disable, leave=leave, file=stream)
    return PlainProgress(iterable, total=total, desc=desc, unit=unit, leave=leave, stream=stream, interval=interval)


def _is_terminal(stream: IO[str]) -> bool:
    """Whether ``stream`` is an open terminal (closed or exotic streams count as not)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


class PlainProgress:
    """tqdm's interface, writing whole lines (never a carriage return) to ``stream``.

    Lines read ``desc: n/total unit in s (rate unit/s), postfix``; while running, at most one
    per ``interval`` seconds with the share done, and one at the end when ``leave``.
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str = "",
        unit: str = "it",
        leave: bool = True,
        stream: IO[str] | None = None,
        interval: float = LINE_INTERVAL,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.leave = leave
        self.stream = sys.stderr if stream is None else stream
        self.interval = interval
        self.n = 0
        self.postfix = ""
        self.started = time.perf_counter()
        self.last_line = self.started
        self.closed = False

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("PlainProgress made without an iterable cannot be iterated")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more; write a line if ``interval`` seconds passed since the last one."""
        self.n += n
        now = time.perf_counter()
        if not self.closed and now - self.last_line >= self.interval:
            self.last_line = now
            self._write(now, running=True)

    def set_postfix(self, **values: Any) -> None:
        """Values shown after the counts, as tqdm's ``set_postfix`` (``key=value`` pairs)."""
        self.postfix = ", ".join(f"{key}={value}" for key, value in values.items())

    def close(self) -> None:
        """End the stage: one closing line when ``leave``; later calls do nothing."""
        if self.closed:
            return
        self.closed = True
        if self.leave:
            self._write(time.perf_counter(), running=False)

    def _write(self, now: float, running: bool) -> None:
        seconds = now - self.started
        counts = f"{self.n}/{self.total}" if self.total is not None else f"{self.n}"
        share = f" ({100.0 * self.n / self.total:.0f}%)" if running and self.total else ""
        rate = f" ({self.n / seconds:.3g} {self.unit}/s)" if seconds > 0 and self.n else ""
        tail = f", {self.postfix}" if self.postfix else ""
        prefix = f"{self.desc}: " if self.desc else ""
        self.stream.write(f"{prefix}{counts} {self.unit}{share} in {seconds:.1f} s{rate}{tail}\n")
        self.stream.flush()
