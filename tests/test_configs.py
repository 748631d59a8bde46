"""Every preset in configs/ loads strictly (unknown keys or wrong types would fail here)."""


import pytest

from detection.config import load_config
from tests.conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.yaml"))


def test_the_four_presets_exist():
    assert {"demo.yaml", "bccd_cpu.yaml", "voc07.yaml", "ilsvrc14_googlenet.yaml"} <= {p.name for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_preset_loads(path):
    config = load_config(path)
    assert config.proposals.selective_search.superpixel_scale in (1.0, 2.0)


def test_paper_preset_is_the_paper():
    config = load_config(REPO / "configs" / "ilsvrc14_googlenet.yaml")
    assert config.proposals.method == "merged" and config.proposals.top_k == 200
    assert config.proposals.selective_search.superpixel_scale == 2.0
    assert config.classifier.crop_size == 224 and config.classifier.width == 1.0 and config.classifier.padding() == 16
    assert config.train.members == 6 and config.train.batch_size == 128 and config.train.fg_fraction == 0.25
    assert config.detection.nms_iou == 0.3 and config.evaluation.protocol == "ilsvrc"
    assert config.multibox.num_priors == 800 and config.multibox.top_k == 200
