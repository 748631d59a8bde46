import pytest
import torch

from detection.core.devices import autocast, resolve_device
from tests.conftest import printed_with_avx2_kernels


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


def test_kernels_held_back_to_avx2_compute_in_float32():
    """With torch and oneDNN limited to AVX2 kernels, as on an AVX2-only CPU, bfloat16 would be
    emulated: networks compute in float32, whatever the CPU's flags say."""
    code = "import torch; from detection.core.devices import compute_dtype; print(compute_dtype(torch.device('cpu')))"
    assert printed_with_avx2_kernels(code) == "torch.float32"
