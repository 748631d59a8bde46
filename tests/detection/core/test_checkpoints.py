import pytest
import torch

from detection.core.checkpoints import CheckpointError, load_checkpoint, save_checkpoint


def test_round_trip_and_checks(tmp_path):
    model = torch.nn.Linear(3, 2)
    path = save_checkpoint(tmp_path / "c.pt", "toy", {"model": {"width": 0.5}, "train": {"lr": 0.1}}, ["a", "b"], model.state_dict(), {"epoch": 3})
    payload = load_checkpoint(path, "toy", classes=["a", "b"], config_must_match={"model": {"width": 0.5}})
    assert payload["extra"]["epoch"] == 3
    torch.testing.assert_close(payload["model"]["weight"], model.weight.detach())
    with pytest.raises(CheckpointError, match="is a toy checkpoint, expected other"):
        load_checkpoint(path, "other")
    with pytest.raises(CheckpointError, match="trained for classes"):
        load_checkpoint(path, "toy", classes=["b", "a"])
    with pytest.raises(CheckpointError, match=r"another configuration \(model.width: 0.5 vs 1.0\)"):
        load_checkpoint(path, "toy", config_must_match={"model": {"width": 1.0}})


def test_bad_files(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "none.pt", "toy")
    (tmp_path / "junk.pt").write_bytes(b"\x00junk")
    with pytest.raises(CheckpointError, match="junk.pt: not a readable checkpoint"):
        load_checkpoint(tmp_path / "junk.pt", "toy")
