"""`rcnn propose` / `rcnn recall` end to end on the built-in data (small images for speed)."""

import json

import numpy as np
import pytest

from detection.cli import main
from detection.data.datasets import load_dataset
from proposals.rcnn_files import export_rcnn, import_rcnn, read_rcnn_file
from proposals.store import ProposalStore

SMALL = ["--set", "proposals.selective_search.max_side=160", "--set", "proposals.chunk_size=2"]


def test_propose_resume_and_summary(tmp_path, capsys):
    out = tmp_path / "ss"
    assert main(["propose", "--data", "synthetic:5:0", "--method", "ss", "--out", str(out), *SMALL]) == 0
    line = capsys.readouterr().out.strip().splitlines()[-1]
    assert line.startswith("images: 5  boxes/image: ") and "seconds/image: " in line
    meta = json.loads((out / "meta.json").read_text())
    assert meta["complete"] and meta["params"]["selective_search"]["superpixel_scale"] == 2.0
    # A warm rerun computes nothing.
    assert main(["propose", "--data", "synthetic:5:0", "--method", "ss", "--out", str(out), *SMALL]) == 0
    assert "nothing to compute" in capsys.readouterr().out
    # Other settings into the same store are refused with a clear message.
    assert main(["propose", "--data", "synthetic:5:0", "--method", "ss", "--superpixel-scale", "1", "--out", str(out), *SMALL]) == 2
    assert "other settings" in capsys.readouterr().err
    assert main(["propose", "--data", "synthetic:6:0", "--method", "ss", "--out", str(out), *SMALL]) == 2
    assert "different dataset" in capsys.readouterr().err


@pytest.mark.slow
def test_two_workers_give_identical_boxes(tmp_path):
    for workers, name in ((1, "one"), (2, "two")):
        assert main(["propose", "--data", "synthetic:4:1", "--method", "ss", "--workers", str(workers), "--out", str(tmp_path / name), *SMALL]) == 0
    for chunk in (tmp_path / "one" / "chunks").iterdir():
        assert chunk.read_bytes() == (tmp_path / "two" / "chunks" / chunk.name).read_bytes()


def test_shards_then_recall(tmp_path, capsys):
    out = tmp_path / "sharded"
    for shard in ("0", "1"):
        assert main(["propose", "--data", "synthetic:4:2", "--method", "ss", "--shard", shard, "--num-shards", "2", "--out", str(out), *SMALL]) == 0
    capsys.readouterr()
    assert main(["recall", "--data", "synthetic:4:2", "--proposals", str(out), "--labels", "ss2x", "--out", str(tmp_path / "report")]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("ss2x recall@0.5=") and "boxes/image=" in last
    assert 0.0 < float(last.split("AR=")[1].split()[0]) <= float(last.split("recall@0.5=")[1].split()[0])
    assert float(last.split("recall@0.5=")[1].split()[0]) > 0.5
    assert (tmp_path / "report" / "recall_vs_proposals.png").stat().st_size > 1000
    report = json.loads((tmp_path / "report" / "recall.json").read_text())
    assert set(report["stores"]["ss2x"]) >= {"recall_50", "recall_70", "mabo", "recall_at_top", "recall_per_class", "average_recall", "ar_per_class"}


def test_unreadable_image_is_counted_not_fatal(tmp_path, make_voc, capsys):
    root = make_voc({"a": (80, 60, [("cat", (5, 5, 40, 40), 0)]), "b": (80, 60, [("cat", (5, 5, 40, 40), 0)])})
    image = root / "JPEGImages" / "b.png"
    image.write_bytes(image.read_bytes()[:200])  # header intact, pixels truncated
    assert main(["propose", "--data", f"voc:{root}", "--method", "ss", "--out", str(tmp_path / "s"), *SMALL]) == 0
    out = capsys.readouterr().out
    assert "failed images: 1" in out
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert list(meta["failed"]) == ["b"]


@pytest.mark.parametrize("suffix", [".mat", ".npz"])
def test_rcnn_file_round_trip(tmp_path, suffix):
    dataset = load_dataset("synthetic:3:0")
    store = ProposalStore(tmp_path / "s", dataset, "toy", {})
    boxes = {r.image_id: np.array([[0, 0, 10, 20], [5, 6, 30, 40]], np.float32) for r in dataset}
    from proposals.store import ImageProposals

    store.fill(lambda i: ImageProposals(dataset[i].image_id, boxes[dataset[i].image_id], np.array([1, 0.5], np.float32), np.zeros(2, np.uint8)))
    path = export_rcnn(store, tmp_path / f"props{suffix}")
    loaded = read_rcnn_file(path)
    np.testing.assert_array_equal(loaded[dataset[0].image_id], boxes[dataset[0].image_id])
    if suffix == ".mat":
        import scipy.io

        raw = scipy.io.loadmat(path)["boxes"][0, 0]
        np.testing.assert_array_equal(raw[0], [1, 1, 20, 10])  # (y1, x1, y2, x2), 1-based inclusive
    imported = import_rcnn(path, dataset, tmp_path / "imported")
    np.testing.assert_array_equal(imported.load_all()[dataset[1].image_id].boxes, boxes[dataset[1].image_id])


@pytest.mark.slow
def test_truncated_jpeg_gets_proposals_and_is_named_once(voc_with_truncated_jpeg, tmp_path, capsys, caplog):
    root, cut_id = voc_with_truncated_jpeg
    # two workers first: they keep data warnings to themselves, so the parent names the file
    for workers, name in (("2", "two"), ("1", "one")):
        assert main(["propose", "--data", f"voc:{root}:all", "--method", "ss", "--workers", workers, "--out", str(tmp_path / name), *SMALL]) == 0
        out = capsys.readouterr().out
        assert "truncated images: 1" in out and "failed images" not in out
        meta = json.loads((tmp_path / name / "meta.json").read_text())
        assert meta["failed_images"] == 0
    assert sum(f"{cut_id}.jpg" in record.getMessage() for record in caplog.records) == 1
    store = ProposalStore.open(tmp_path / "one", load_dataset(f"voc:{root}:all")).load_all()
    assert len(store[cut_id].boxes) > 0
