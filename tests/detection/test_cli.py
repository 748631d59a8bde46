"""The ``rcnn`` command as a user runs it: evaluate, data, demo."""

import json

import pytest

from detection.cli import main
from detection.data.datasets import load_dataset
from detection.data.detection_files import write_coco_results, write_detections
from detection.simulate import simulate_detections
from eval.detection import evaluate


@pytest.fixture
def synthetic_files(tmp_path):
    dataset = load_dataset("synthetic:12:3")
    detections = simulate_detections(dataset, seed=1)
    path = write_detections(tmp_path / "dets.json", detections, dataset.classes)
    return dataset, detections, path


def test_evaluate_prints_table_and_map_last(synthetic_files, tmp_path, capsys):
    dataset, _, path = synthetic_files
    assert main(["evaluate", "--gt", dataset.spec, "--detections", str(path), "--protocol", "voc12", "--json", str(tmp_path / "r.json")]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[-1].startswith("mAP: 0.") and len(lines[-1]) == len("mAP: 0.0000")
    report = json.loads((tmp_path / "r.json").read_text())
    assert set(report) >= {"protocol", "iou", "map", "per_class", "num_gt", "num_det"}
    assert report["protocol"] == "voc12" and f"{report['map']:.4f}" == lines[-1].split()[-1]


def test_voc_xml_and_coco_json_give_identical_results(synthetic_files, tmp_path, capsys):
    """The same ground truth and detections, once as VOC XML + our JSON, once as COCO JSON + results."""
    dataset, detections, path = synthetic_files
    assert main(["data", "--data", dataset.spec, "--export-voc", str(tmp_path / "voc"), "--export-coco", str(tmp_path / "gt.json")]) == 0
    voc = load_dataset(f"voc:{tmp_path / 'voc'}")
    coco = load_dataset(f"coco:{tmp_path / 'gt.json'}")
    id_of = {record.image_id: str(index + 1) for index, record in enumerate(dataset)}
    coco_detections = type(detections)([id_of[i] for i in detections.image_ids], detections.labels, detections.scores, detections.boxes)
    write_coco_results(tmp_path / "results.json", coco_detections, coco)
    for protocol in ("ilsvrc", "voc07", "voc12", "coco50"):
        outputs = []
        for gt, dets in ((f"voc:{tmp_path / 'voc'}", path), (f"coco:{tmp_path / 'gt.json'}", tmp_path / "results.json")):
            capsys.readouterr()
            assert main(["evaluate", "--gt", gt, "--detections", str(dets), "--protocol", protocol, "--json", str(tmp_path / "o.json")]) == 0
            outputs.append(json.loads((tmp_path / "o.json").read_text()))
        assert outputs[0]["map"] == outputs[1]["map"] and outputs[0]["per_class"] == outputs[1]["per_class"], protocol
        assert outputs[0]["map"] > 0.3


def test_bad_inputs_exit_2_with_a_clear_message(synthetic_files, tmp_path, capsys):
    dataset, _, _ = synthetic_files
    (tmp_path / "broken.json").write_text("[{")
    assert main(["evaluate", "--gt", dataset.spec, "--detections", str(tmp_path / "broken.json")]) == 2
    assert "broken.json: malformed JSON" in capsys.readouterr().err
    assert main(["evaluate", "--gt", "nope:x", "--detections", str(tmp_path / "broken.json")]) == 2
    assert "unknown dataset spec" in capsys.readouterr().err


def test_data_summary(capsys):
    assert main(["data", "--data", "synthetic:5:0"]) == 0
    out = capsys.readouterr().out
    assert "images: 5" in out and "circle" in out


def test_simulate_runs_and_prints_every_protocol(tmp_path, capsys):
    assert main(["simulate", "--data", "synthetic:8:2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for protocol in ("ilsvrc", "voc07", "voc12", "coco50"):
        assert f"| {protocol} | 0." in out
    assert (tmp_path / "detections.json").is_file()


@pytest.mark.data
def test_evaluate_on_bccd_test(bccd_root, tmp_path, capsys):
    dataset = load_dataset(f"voc:{bccd_root}:test")
    path = write_detections(tmp_path / "bccd.json", simulate_detections(dataset, seed=0), dataset.classes)
    assert main(["evaluate", "--gt", dataset.spec, "--detections", str(path), "--protocol", "ilsvrc"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert any(line.startswith("RBC") for line in lines)
    assert 0.3 < float(lines[-1].split()[-1]) < 1.0


def _gt_store(directory, dataset):
    """A proposal store for ``dataset`` holding every other ground-truth box, slightly shifted."""
    import numpy as np

    from proposals.store import ImageProposals, ProposalStore

    def compute(index):
        record = dataset[index]
        boxes = record.boxes[::2] + 1.0
        return ImageProposals(record.image_id, boxes, np.ones(len(boxes), np.float32), np.zeros(len(boxes), np.uint8))

    ProposalStore(directory, dataset, "test", {}, chunk_size=8).fill(compute)
    return directory


def test_analyze_writes_tables_json_and_figure(synthetic_files, tmp_path, capsys):
    dataset, detections, path = synthetic_files
    store = _gt_store(tmp_path / "store", dataset)
    out = tmp_path / "analysis"
    assert main(["analyze", "--gt", dataset.spec, "--detections", str(path), "--proposals", str(store), "--protocol", "voc12", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "| class | #gt | AP | +localisation | +confusion | +background | recall | coverage |" in printed
    report = json.loads((out / "analysis.json").read_text())
    assert report["map"] == evaluate(dataset, detections, "voc12").map and report["with_proposals"]
    coverage = [c["coverage"] for c in report["classes"].values()]
    assert 0.3 < sum(coverage) / len(coverage) < 0.8  # every other box is covered
    assert report["totals"]["missed"]["not_covered"] > 0
    text = (out / "analysis.md").read_text()
    assert "## Missed objects" in text and "![false positive types](fp_types.png)" in text
    assert (out / "fp_types.png").stat().st_size > 1000


def test_analyze_bad_inputs(synthetic_files, tmp_path, capsys, caplog):
    dataset, _, path = synthetic_files
    entries = json.loads(path.read_text())
    entries += [
        {"image_id": "nope1", "label": "circle", "score": 0.5, "box": [0, 0, 5, 5]},
        {"image_id": "nope2", "label": "circle", "score": 0.5, "box": [0, 0, 5, 5]},
        {"image_id": entries[0]["image_id"], "label": "unicorn", "score": 0.5, "box": [0, 0, 5, 5]},
    ]
    (tmp_path / "stray.json").write_text(json.dumps(entries))
    assert main(["analyze", "--gt", dataset.spec, "--detections", str(tmp_path / "stray.json"), "--out", str(tmp_path / "a")]) == 0
    assert "nope1" in caplog.text and "unicorn" in caplog.text
    assert "detection for an image not in the dataset, dropped x2" in caplog.text
    assert "detection with a label not in the dataset, dropped x1" in caplog.text
    # A proposal store made for other data is refused, naming the store and what differs.
    store = _gt_store(tmp_path / "other", load_dataset("synthetic:12:4"))
    capsys.readouterr()
    assert main(["analyze", "--gt", dataset.spec, "--detections", str(path), "--proposals", str(store), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert "rcnn analyze: error:" in err and "made for a different dataset" in err and str(store) in err
    assert not (tmp_path / "b").exists()
