import pytest
import torch

from detection.core.devices import autocast, resolve_device


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="unknown device"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def test_autocast_runs():
    with autocast(torch.device("cpu")):
        out = torch.nn.Linear(4, 2)(torch.randn(3, 4))
    assert out.shape == (3, 2)
