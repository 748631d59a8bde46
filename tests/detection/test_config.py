import pytest

from detection.config import Config, ConfigError, load_config, to_dict


def test_defaults_and_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("seed: 3\ndata:\n  test: voc:/x:test\nevaluation:\n  protocol: voc07\n  iou: 1\n")
    config = load_config(path)
    assert config.seed == 3 and config.data.test == "voc:/x:test" and config.data.train == Config().data.train
    assert config.evaluation.protocol == "voc07" and config.evaluation.iou == 1.0 and isinstance(config.evaluation.iou, float)


def test_overrides_are_parsed_as_yaml():
    config = load_config(None, ["evaluation.iou=0.7", "seed=5", "data.train=synthetic:10:2"])
    assert config.evaluation.iou == 0.7 and config.seed == 5 and config.data.train == "synthetic:10:2"


@pytest.mark.parametrize(
    "text, message",
    [
        ("sed: 1\n", "unknown key.*sed"),
        ("evaluation:\n  protocl: voc07\n", r"config\.yaml\.evaluation: unknown key.*protocl"),
        ("evaluation:\n  iou: high\n", r"evaluation\.iou: expected a number"),
        ("evaluation:\n  protocol: pascal\n", "not one of"),
        ("seed: true\n", "expected an integer"),
        ("data: [1, 2]\n", "expected a mapping"),
        ("- a\n", "top level must be a mapping"),
        ("a: [\n", "malformed YAML"),
    ],
)
def test_strict_errors_name_file_and_key(tmp_path, text, message):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(path)


def test_bad_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="section.key=value"):
        load_config(None, ["seed"])
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(None, ["evaluation.nope=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_to_dict_round_trip():
    config = load_config(None, ["seed=9"])
    import yaml

    again = load_config(None, [f"{k}={v}" for k, v in [("seed", 9)]])
    assert to_dict(config) == to_dict(again)
    assert yaml.safe_load(yaml.safe_dump(to_dict(config)))["seed"] == 9


def test_partial_nested_section_keeps_enclosing_defaults():
    # ProposalConfig's default doubles the superpixels; overriding another key keeps that.
    config = load_config(None, ["proposals.selective_search.max_side=400"])
    assert config.proposals.selective_search.max_side == 400
    assert config.proposals.selective_search.superpixel_scale == 2.0


def test_section_validation_errors_are_config_errors():
    with pytest.raises(ConfigError, match="superpixel_scale must be positive"):
        load_config(None, ["proposals.selective_search.superpixel_scale=-1"])
