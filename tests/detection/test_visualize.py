import numpy as np

from detection.cli import main
from detection.data.records import Detections, ImageRecord
from detection.visualize import FALSE_POSITIVE, TRUE_POSITIVE, draw_image, match_for_display


def test_match_for_display_marks_duplicates_and_wrong_class():
    record = ImageRecord("a", None, 100, 100, [[10, 10, 50, 50]], [0])
    boxes = np.array([[10, 10, 50, 50], [11, 11, 50, 50], [10, 10, 50, 50]], np.float32)
    tp, found = match_for_display(record, boxes, np.array([0, 0, 1]), np.array([0.9, 0.8, 0.95]))
    assert tp.tolist() == [True, False, False] and found.tolist() == [True]


def test_draw_image_colours():
    record = ImageRecord("a", None, 100, 80, [[10, 10, 50, 50]], [0])
    detections = Detections(["a", "a"], [0, 0], [0.9, 0.8], [[10, 10, 50, 50], [60, 20, 90, 70]])
    canvas = draw_image(np.zeros((80, 100, 3), np.uint8), record, ["cat"], detections=detections)
    assert canvas.shape == (80, 100, 3)
    assert tuple(canvas[69, 75]) == FALSE_POSITIVE  # bottom edge of the false positive
    assert tuple(canvas[30, 10]) in (TRUE_POSITIVE, (255, 255, 255))


def test_show_command_writes_pngs(tmp_path, capsys):
    from detection.data.datasets import load_dataset
    from detection.data.detection_files import write_detections
    from detection.simulate import simulate_detections

    dataset = load_dataset("synthetic:3:0")
    write_detections(tmp_path / "d.json", simulate_detections(dataset), dataset.classes)
    assert main(["show", "--data", "synthetic:3:0", "--detections", str(tmp_path / "d.json"), "--out", str(tmp_path / "pics")]) == 0
    assert len(list((tmp_path / "pics").glob("*.png"))) == 3
