import json
import logging

import numpy as np
import pytest

from detection.core.problems import DataError
from detection.data.detection_files import read_detections, write_coco_results, write_detections
from detection.data.records import Dataset, Detections, ImageRecord


def _dataset() -> Dataset:
    records = [ImageRecord("a", None, 50, 40, [[0, 0, 10, 10]], [0]), ImageRecord("b", None, 50, 40, [[5, 5, 20, 20]], [1])]
    return Dataset("test", ["cat", "dog"], records, image_loader=lambda r: np.zeros((r.height, r.width, 3), np.uint8))


def test_write_read_round_trip(tmp_path):
    dataset = _dataset()
    detections = Detections(["a", "b"], [0, 1], [0.9, 0.25], [[1, 2, 3, 4], [5.5, 6, 7, 8]])
    path = write_detections(tmp_path / "d.json", detections, dataset.classes)
    entries = json.loads(path.read_text())
    assert entries[0] == {"image_id": "a", "label": "cat", "score": pytest.approx(0.9), "box": [1, 2, 3, 4]}
    again = read_detections(path, dataset)
    np.testing.assert_array_equal(again.boxes, detections.boxes)
    assert again.labels.tolist() == [0, 1] and list(again.image_ids) == ["a", "b"]


def test_coco_results_round_trip(tmp_path):
    dataset = _dataset()
    dataset.records[0].image_id, dataset.records[1].image_id = "7", "8"
    detections = Detections(["7", "8"], [1, 0], [0.5, 0.6], [[1, 2, 11, 22], [0, 0, 5, 5]])
    path = write_coco_results(tmp_path / "r.json", detections, dataset)
    entries = json.loads(path.read_text())
    assert entries[0] == {"image_id": 7, "category_id": 2, "bbox": [1, 2, 10, 20], "score": 0.5}
    again = read_detections(path, dataset)
    np.testing.assert_array_equal(again.boxes, detections.boxes)
    assert again.labels.tolist() == [1, 0]


def test_unknown_images_and_labels_are_counted_and_dropped(tmp_path, caplog):
    entries = [
        {"image_id": "a", "label": "cat", "score": 0.9, "box": [0, 0, 10, 10]},
        {"image_id": "zzz", "label": "cat", "score": 0.9, "box": [0, 0, 10, 10]},
        {"image_id": "a", "label": "horse", "score": 0.9, "box": [0, 0, 10, 10]},
        {"image_id": "b", "label": "dog", "score": 0.5, "box": [9, 0, 1, 10]},
    ]
    (tmp_path / "d.json").write_text(json.dumps(entries))
    with caplog.at_level(logging.WARNING):
        detections = read_detections(tmp_path / "d.json", _dataset())
    assert len(detections) == 1
    assert "image not in the dataset" in caplog.text and "zzz" in caplog.text
    assert "label not in the dataset" in caplog.text and "horse" in caplog.text
    assert "inverted box" in caplog.text
    assert "3 warnings" in caplog.text


@pytest.mark.parametrize(
    "content, message",
    [
        ("{oops", "malformed JSON"),
        ('{"a": 1}', "expected a JSON list"),
        ('[{"image_id": "a", "label": "cat", "score": 0.5}]', "entry 0 must be an object with keys"),
        ('[{"image_id": "a", "label": "cat", "score": "high", "box": [0,0,1,1]}]', "entry 0: score is not a number"),
        ('[{"image_id": "a", "label": "cat", "score": 0.5, "box": [0,0,1]}]', "entry 0: 'box' must be 4 numbers"),
        ('[{"image_id": "a", "label": "cat", "score": NaN, "box": [0,0,1,1]}]', "not finite"),
        ('[{"image_id": "q", "label": "cat", "score": 0.5, "box": [0,0,1,1]}]', "none of its 1 detections"),
    ],
)
def test_malformed_files_name_file_and_fault(tmp_path, content, message):
    (tmp_path / "d.json").write_text(content)
    with pytest.raises(DataError, match=message) as info:
        read_detections(tmp_path / "d.json", _dataset())
    assert "d.json" in str(info.value)


def test_empty_list_is_no_detections(tmp_path):
    (tmp_path / "d.json").write_text("[]")
    assert len(read_detections(tmp_path / "d.json", _dataset())) == 0
