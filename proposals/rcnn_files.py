"""R-CNN's per-image proposal files, imported into and exported from our store.

R-CNN (and Fast R-CNN) keep Selective Search boxes as one ``(B, 4)`` array per image in
``(y1, x1, y2, x2)`` order, 1-based inclusive pixels (MATLAB indexing), with the image names
beside them: a ``.mat`` file with cell arrays ``boxes`` and ``images``. We read and write that
layout as ``.mat`` (scipy.io) and as ``.npz`` (``images`` plus ``boxes_00000``... arrays),
converting boxes through :mod:`detection.core.boxes` only here, at the file boundary.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from detection.core import boxes as box_ops
from detection.core.atomic import atomic_write
from detection.data.records import Dataset
from proposals.store import SOURCES, ImageProposals, ProposalStore, StoreError, rank_scores

__all__ = ["export_rcnn", "import_rcnn", "read_rcnn_file"]


def export_rcnn(store: ProposalStore, path: str | Path) -> Path:
    """Write a complete store's boxes as R-CNN's layout (``.mat`` or ``.npz`` by suffix)."""
    path = Path(path)
    items = list(store.iter_images())
    names = [item.image_id for item in items]
    per_image = [box_ops.xyxy_to_rcnn(item.boxes).astype(np.float64) for item in items]
    if path.suffix == ".mat":
        import scipy.io  # only for R-CNN's .mat files

        boxes_cell = np.empty((1, len(items)), dtype=object)
        images_cell = np.empty((1, len(items)), dtype=object)
        for i, (name, boxes) in enumerate(zip(names, per_image)):
            boxes_cell[0, i] = boxes
            images_cell[0, i] = name

        def write(handle):
            buffer = io.BytesIO()
            scipy.io.savemat(buffer, {"boxes": boxes_cell, "images": images_cell}, do_compression=True)
            handle.write(buffer.getvalue())

    elif path.suffix == ".npz":

        def write(handle):
            buffer = io.BytesIO()
            np.savez(buffer, images=np.array(names, dtype=str), **{f"boxes_{i:05d}": b for i, b in enumerate(per_image)})
            handle.write(buffer.getvalue())

    else:
        raise ValueError(f"{path}: R-CNN proposal files are .mat or .npz")
    return atomic_write(path, write)


def read_rcnn_file(path: str | Path) -> dict[str, np.ndarray]:
    """Image name -> ``(B, 4)`` boxes in our convention, from an R-CNN ``.mat`` or ``.npz``."""
    path = Path(path)
    if not path.is_file():
        raise StoreError(f"{path}: file not found")
    try:
        if path.suffix == ".mat":
            import scipy.io  # only for R-CNN's .mat files

            data = scipy.io.loadmat(path, squeeze_me=False)
            names = [str(np.squeeze(n)) for n in np.ravel(data["images"])]
            arrays = [np.asarray(b, dtype=np.float64).reshape(-1, 4) for b in np.ravel(data["boxes"])]
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                names = [str(n) for n in data["images"]]
                arrays = [data[f"boxes_{i:05d}"].reshape(-1, 4) for i in range(len(names))]
        else:
            raise StoreError(f"{path}: R-CNN proposal files are .mat or .npz")
    except (KeyError, ValueError, OSError) as error:
        raise StoreError(f"{path}: not an R-CNN proposal file ({error})") from None
    if len(names) != len(arrays):
        raise StoreError(f"{path}: {len(names)} image names but {len(arrays)} box arrays")
    return {name: box_ops.rcnn_to_xyxy(boxes) for name, boxes in zip(names, arrays)}


def import_rcnn(path: str | Path, dataset: Dataset, out_dir: str | Path) -> ProposalStore:
    """Make a store from an R-CNN file; images it lacks are recorded as failed, not dropped."""
    boxes_of = read_rcnn_file(path)
    store = ProposalStore(out_dir, dataset, "imported", {"source": Path(path).name})

    def compute(index: int) -> ImageProposals:
        record = dataset[index]
        boxes = boxes_of.get(record.image_id)
        if boxes is None:
            return ImageProposals.failed(record.image_id, f"not in {Path(path).name}")
        boxes = box_ops.clip_boxes(boxes, record.width, record.height)
        return ImageProposals(record.image_id, boxes, rank_scores(len(boxes)), np.full(len(boxes), SOURCES["imported"], np.uint8))

    store.fill(compute)
    return store
