"""Atomic file writes: a temporary file in the same folder, flushed, then renamed over the target.

A killed run therefore leaves either the old file or the complete new one, never a half-written
file that a later run would trust.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

import numpy as np

__all__ = ["atomic_write", "write_text", "write_json", "write_npz"]


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], None]) -> Path:
    """Call ``write(handle)`` on a temporary file beside ``path`` and rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode()))


def write_json(path: str | Path, data: object, indent: int | None = 1) -> Path:
    return write_text(path, json.dumps(data, indent=indent) + "\n")


def write_npz(path: str | Path, **arrays: np.ndarray) -> Path:
    """``np.savez`` (uncompressed, so equal arrays give byte-identical files) written atomically."""

    def write(handle: IO[bytes]) -> None:
        buffer = io.BytesIO()
        np.savez(buffer, **arrays)
        handle.write(buffer.getvalue())

    return atomic_write(path, write)


def file_digest(path: str | Path) -> str:
    """A short hash of a file's bytes: derived outputs record it to notice a replaced checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]
