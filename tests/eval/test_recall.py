import numpy as np
import pytest

from detection.data.records import Dataset, ImageRecord
from eval.recall import format_recall_table, plot_recall, proposal_recall


def _dataset() -> Dataset:
    records = [
        ImageRecord("a", None, 100, 100, [[0, 0, 10, 10], [50, 50, 90, 90]], [0, 1]),
        ImageRecord("b", None, 100, 100, [[20, 20, 40, 40]], [0]),
    ]
    return Dataset("toy", ["cat", "dog"], records, image_loader=lambda r: None)


def test_hand_worked_recall():
    proposals = {
        # a: first proposal overlaps cat with IoU 0.5 exactly; the third covers the dog perfectly.
        "a": np.array([[0, 0, 10, 5], [60, 60, 70, 70], [50, 50, 90, 90]], np.float32),
        # b: IoU 400/ (400+ 600 - 400)... a box [20,20,40,50]: inter 400, union 600 -> 0.667
        "b": np.array([[20, 20, 40, 50]], np.float32),
    }
    result = proposal_recall(_dataset(), proposals, label="toy")
    assert result.num_gt == 3 and result.boxes_per_image == 2.0
    assert result.recall_50 == 1.0
    assert result.recall_70 == pytest.approx(1 / 3)
    assert result.abo_per_class["cat"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert result.abo_per_class["dog"] == pytest.approx(1.0)
    assert result.mabo == pytest.approx(((0.5 + 2 / 3) / 2 + 1.0) / 2)
    # Keeping only the top 1 proposal per image loses the dog.
    curve = dict(zip(result.curve_num_proposals, result.curve_recall_vs_num))
    assert curve[1] == pytest.approx(2 / 3) and curve[3] == 1.0
    assert result.recall_at_top[100] == 1.0
    # Average recall over t = 0.50, 0.55, ..., 0.95 (best overlaps 0.5, 1 and 2/3): all three at
    # 0.50, the dog and the 2/3 cat at 0.55-0.65, the dog alone at 0.70-0.95.
    assert result.average_recall == pytest.approx((1 + 3 * 2 / 3 + 6 * 1 / 3) / 10)
    assert result.ar_per_class["cat"] == pytest.approx((1 + 3 * 1 / 2) / 10)
    assert result.ar_per_class["dog"] == 1.0
    assert result.recall_per_class == {"cat": 1.0, "dog": 1.0}


def test_missing_images_are_misses_and_outputs(tmp_path):
    result = proposal_recall(_dataset(), {"a": np.array([[0, 0, 10, 10]], np.float32)}, label="one")
    assert result.recall_50 == pytest.approx(1 / 3)
    table = format_recall_table([result, result])
    assert "| recall@0.5 | 0.3333 | 0.3333 |" in table and "coverage: dog" in table
    # the cat in a is covered exactly (IoU 1 at every threshold); the others not at all
    assert "| AR (0.50:0.95) | 0.3333 | 0.3333 |" in table and "| AR: cat | 0.5000 | 0.5000 |" in table
    paths = plot_recall([result], tmp_path)
    assert all(p.stat().st_size > 1000 for p in paths)
