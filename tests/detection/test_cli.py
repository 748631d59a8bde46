"""The ``rcnn`` command as a user runs it: evaluate, data, demo."""

import json

import pytest

from detection.cli import main
from detection.data.datasets import load_dataset
from detection.data.detection_files import write_coco_results, write_detections
from detection.simulate import simulate_detections


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
