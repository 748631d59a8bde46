"""Shared fixtures: the real datasets beside the checkout, a small VOC folder builder, and an
eager stand-in for the compiled scoring path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
BCCD = SHARED_DATA / "bccd" / "BCCD"
RACCOON = SHARED_DATA / "raccoon"


@pytest.fixture
def bccd_root() -> Path:
    if not (BCCD / "Annotations").is_dir():
        pytest.skip("../shared/data/bccd is not present")
    return BCCD


@pytest.fixture
def raccoon_root() -> Path:
    if not (RACCOON / "annotations").is_dir():
        pytest.skip("../shared/data/raccoon is not present")
    return RACCOON


def voc_xml(filename: str, width: int, height: int, objects: list[tuple[str, tuple[float, float, float, float], int]]) -> str:
    """A VOC annotation; ``objects`` are ``(name, (xmin, ymin, xmax, ymax), difficult)`` 1-based."""
    body = "".join(
        f"<object><name>{name}</name><difficult>{difficult}</difficult><bndbox>"
        f"<xmin>{box[0]}</xmin><ymin>{box[1]}</ymin><xmax>{box[2]}</xmax><ymax>{box[3]}</ymax></bndbox></object>"
        for name, box, difficult in objects
    )
    return f"<annotation><filename>{filename}</filename><size><width>{width}</width><height>{height}</height></size>{body}</annotation>"


@pytest.fixture
def make_voc(tmp_path: Path):
    """Build a VOC folder: ``make_voc({"img1": (w, h, objects)}, classes=None, splits=None)``."""

    def build(images: dict, classes: list[str] | None = None, splits: dict[str, list[str]] | None = None) -> Path:
        root = tmp_path / "voc"
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "JPEGImages").mkdir(exist_ok=True)
        for image_id, (width, height, objects) in images.items():
            pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "JPEGImages" / f"{image_id}.png")
            (root / "Annotations" / f"{image_id}.xml").write_text(voc_xml(f"{image_id}.png", width, height, objects))
        if classes is not None:
            (root / "classes.txt").write_text("\n".join(classes) + "\n")
        for name, ids in (splits or {}).items():
            (root / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
            (root / "ImageSets" / "Main" / f"{name}.txt").write_text("\n".join(ids) + "\n")
        return root

    return build


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: one torch thread. On a busy machine OpenMP barriers over two threads cost 10-100x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def eager_compile(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """``torch.compile`` of the scoring path replaced by eager stand-ins (the real compile takes
    minutes on a small CPU); returns the crop count of every call of the "compiled" warp."""
    from classifiers import scoring
    from classifiers.crops import gather_crops

    calls: list[int] = []

    def compile_warp():
        def warp(pixels, canvas_hw, rois, *args, **kwargs):
            calls.append(len(rois))
            return gather_crops(pixels, canvas_hw, rois, *args, **kwargs)

        return warp

    monkeypatch.setattr(scoring, "_compile_member", lambda model, mode: model)
    monkeypatch.setattr(scoring, "_compile_warp", compile_warp)
    return calls
