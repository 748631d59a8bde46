"""Shared fixtures: the real datasets beside the checkout, a small VOC folder builder, a JPEG cut
short, and an eager stand-in for the compiled scoring path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from detection.data.datasets import load_dataset, write_voc

REPO = Path(__file__).resolve().parents[1]
# torch's and oneDNN's kernels held to AVX2: what an AVX2-only CPU runs, on any x86 machine.
AVX2_KERNELS = {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
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


def write_truncated_jpeg(path: Path, pixels: np.ndarray, keep: float = 0.7) -> Path:
    """Save uint8 RGB ``pixels`` as a baseline JPEG and cut the file to its first ``keep`` share
    of bytes, as a download that stopped early leaves it. Returns ``path``."""
    Image.fromarray(pixels).save(path, format="JPEG", quality=90)
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    return path


@pytest.fixture
def truncated_jpeg():
    """:func:`write_truncated_jpeg`, for tests that cut their own JPEG short."""
    return write_truncated_jpeg


@pytest.fixture
def voc_with_truncated_jpeg(tmp_path: Path) -> tuple[Path, str]:
    """``synthetic:6:0`` written as a VOC folder (splits ``all``) whose first image is a JPEG
    missing its last 30% of bytes; returns ``(root, that image's id)``."""
    dataset = load_dataset("synthetic:6:0")
    root = write_voc(dataset, tmp_path / "voc_truncated", splits={"all": [record.image_id for record in dataset]})
    first = dataset[0].image_id
    (root / "JPEGImages" / f"{first}.png").unlink()  # the reader then finds {first}.jpg by its stem
    write_truncated_jpeg(root / "JPEGImages" / f"{first}.jpg", dataset.load_image(0))
    return root, first


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
    # The gather path is tested on every CPU (its stand-in is eager); see compiled_warp_supported.
    monkeypatch.setattr(scoring, "compiled_warp_supported", lambda device: True)
    return calls


def printed_with_avx2_kernels(code: str) -> str:
    """What ``python -c code`` prints (stripped), run from the repository under :data:`AVX2_KERNELS`
    (a fresh process: the kernel choice is made when torch loads)."""
    env = {**os.environ, **AVX2_KERNELS}
    return subprocess.run([sys.executable, "-c", code], env=env, cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
