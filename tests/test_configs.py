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


def test_pretrained_preset_starts_both_networks_from_torchvisions_file(tmp_path, monkeypatch):
    # The preset needs torchvision's ImageNet GoogLeNet in the hub cache; a randomly initialised
    # torchvision GoogLeNet saved under that file's name stands in for it.
    import torch
    import torchvision

    from classifiers.inception_weights import imagenet_weights_path
    from classifiers.region_classifier import build_region_classifier
    from proposals.multibox import MultiBox

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)
    torch.manual_seed(0)
    reference = torchvision.models.googlenet(weights=None, aux_logits=True, init_weights=True).state_dict()
    path = imagenet_weights_path()
    path.parent.mkdir(parents=True)
    torch.save(reference, path)

    config = load_config(REPO / "configs" / "raccoon_pretrained.yaml")
    classifier = build_region_classifier(config.classifier, num_classes=1)
    multibox = MultiBox(config.multibox)
    multibox.load_backbone_weights(config.multibox.weights)
    for key in ("conv1.conv.weight", "inception4a.branch2.1.conv.weight", "inception5b.branch4.1.bn.running_mean"):
        torch.testing.assert_close(classifier.state_dict()[key], reference[key])
        torch.testing.assert_close(multibox.backbone.state_dict()[key], reference[key])
    assert classifier.fc.out_features == 2  # raccoon + background, left at its random start
    # From scratch, the same recipe but for the network: only the data lines differ from BCCD's.
    scratch, bccd = load_config(REPO / "configs" / "raccoon_cpu.yaml"), load_config(REPO / "configs" / "bccd_cpu.yaml")
    assert scratch.classifier.weights is None and scratch.multibox.weights is None
    assert (scratch.train, scratch.classifier, scratch.multibox, scratch.proposals) == (bccd.train, bccd.classifier, bccd.multibox, bccd.proposals)
