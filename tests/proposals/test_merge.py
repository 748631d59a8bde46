import numpy as np

from proposals.merge import merge_proposals
from proposals.store import SOURCES, ImageProposals


def test_merge_keeps_first_occurrence_and_sources():
    multibox = ImageProposals("a", np.array([[0, 0, 10, 10], [5, 5, 20, 20]], np.float32), np.array([0.9, 0.8], np.float32), np.full(2, SOURCES["multibox"], np.uint8))
    ss = ImageProposals("a", np.array([[5.2, 4.9, 20, 20], [1, 1, 3, 3]], np.float32), np.array([1.0, 0.5], np.float32), np.full(2, SOURCES["selective_search"], np.uint8))
    merged = merge_proposals(multibox, ss)
    np.testing.assert_array_equal(merged.boxes, [[0, 0, 10, 10], [5, 5, 20, 20], [1, 1, 3, 3]])
    assert merged.sources.tolist() == [SOURCES["multibox"]] * 2 + [SOURCES["selective_search"]]
    assert np.all(np.diff(merged.scores) < 0)
