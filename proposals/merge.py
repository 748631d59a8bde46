"""Merging proposal lists (Selective Search + MultiBox), keeping where each box came from.

The merged list puts the MultiBox boxes first, in confidence order, then the Selective Search
boxes in their own ranking: MultiBox's few confident boxes are the better bet for a reader that
keeps only the top N. A box that appears in both lists (the same pixel rectangle after rounding)
is kept once, at its first position, with the source that put it there. Merged scores are
rank-based, ``(B - rank) / B``, so "higher = earlier" holds as in every store.
"""

from __future__ import annotations

import numpy as np

from proposals.store import ImageProposals, rank_scores

__all__ = ["merge_proposals", "unique_rows_first"]


def unique_rows_first(boxes: np.ndarray) -> np.ndarray:
    """Indices ``(K,)`` of the first occurrence of each distinct rounded box, in original order."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    rounded = np.round(boxes).astype(np.int64)
    _, first = np.unique(rounded, axis=0, return_index=True)
    return np.sort(first)


def merge_proposals(*parts: ImageProposals) -> ImageProposals:
    """Concatenate the parts in the given order, drop repeated boxes, rescore by rank."""
    if not parts:
        raise ValueError("merge_proposals needs at least one proposal list")
    image_id = parts[0].image_id
    if any(part.image_id != image_id for part in parts):
        raise ValueError(f"cannot merge proposals of different images: {[p.image_id for p in parts]}")
    errors = "; ".join(part.error for part in parts if part.error)
    boxes = np.concatenate([part.boxes for part in parts]).astype(np.float32).reshape(-1, 4)
    sources = np.concatenate([part.sources for part in parts]).astype(np.uint8)
    keep = unique_rows_first(boxes)
    return ImageProposals(image_id, boxes[keep], rank_scores(len(keep)), sources[keep], errors)
