"""Checkpoints: weights, the config that made them, the class list and training state.

A checkpoint is a dict saved with :func:`torch.save` and written atomically, holding only
tensors and plain Python data, so it loads with ``torch.load(..., weights_only=True)``::

    {"kind": "region_classifier" | "multibox" | ..., "format_version": 1,
     "config": {...}, "classes": [...], "model": state_dict,
     "extra": {...}}   # optimizer state, epoch, rng state, metrics: whatever resuming needs

Loading checks the kind and, where the caller gives them, the class list and the config
sections that define the architecture, and refuses a mismatch with a message naming the file
and the first difference.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from detection.core.atomic import atomic_write

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "first_difference"]

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint that cannot be used here; the message names the file and the fault."""


def save_checkpoint(path: str | Path, kind: str, config: dict[str, Any], classes: list[str], model: dict[str, torch.Tensor], extra: dict[str, Any] | None = None) -> Path:
    """Write a checkpoint atomically (see the module note for the layout)."""
    payload = {
        "kind": kind,
        "format_version": FORMAT_VERSION,
        "config": config,
        "classes": list(classes),
        "model": {k: v.detach().cpu() for k, v in model.items()},
        "extra": extra or {},
    }

    def write(handle: Any) -> None:
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        handle.write(buffer.getvalue())

    return atomic_write(path, write)


def first_difference(stored: Any, expected: Any, where: str = "") -> str | None:
    """A readable path to the first place two plain-data trees differ, or None if equal."""
    if isinstance(stored, dict) and isinstance(expected, dict):
        for key in sorted(set(stored) | set(expected), key=str):
            if key not in stored or key not in expected:
                return f"{where}{key}: present in only one"
            found = first_difference(stored[key], expected[key], f"{where}{key}.")
            if found:
                return found
        return None
    if isinstance(stored, (list, tuple)) and isinstance(expected, (list, tuple)):
        if list(stored) != list(expected):
            return f"{where.rstrip('.')}: {stored!r} vs {expected!r}"
        return None
    if stored != expected:
        return f"{where.rstrip('.')}: {stored!r} vs {expected!r}"
    return None


def load_checkpoint(
    path: str | Path,
    kind: str,
    classes: list[str] | None = None,
    config_must_match: dict[str, Any] | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load and check a checkpoint.

    Args:
        kind: the expected ``kind``.
        classes: if given, the class list must be identical (same names, same order).
        config_must_match: config entries (nested dicts) that must equal the stored ones, e.g.
            the architecture section; other entries may differ.
    Raises:
        CheckpointError naming the file and the first mismatch.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises many types for truncated or foreign files
        raise CheckpointError(f"{path}: not a readable checkpoint ({type(error).__name__}: {str(error)[:200]})") from None
    if not isinstance(payload, dict) or "kind" not in payload or "model" not in payload:
        raise CheckpointError(f"{path}: not a checkpoint of this project (no 'kind'/'model')")
    if payload["kind"] != kind:
        raise CheckpointError(f"{path}: is a {payload['kind']} checkpoint, expected {kind}")
    if classes is not None and list(payload["classes"]) != list(classes):
        raise CheckpointError(
            f"{path}: trained for classes {payload['classes']}, but the data has {list(classes)}"
        )
    if config_must_match:
        for section, expected in config_must_match.items():
            difference = first_difference(payload["config"].get(section), expected, f"{section}.")
            if difference:
                raise CheckpointError(f"{path}: made with another configuration ({difference})")
    return payload
