"""Device choice and numeric settings shared by every stage that runs a network.

``--device auto`` picks CUDA when present, else the CPU. Networks run in bfloat16 autocast where
the hardware does bfloat16 matrix work natively (CUDA with compute capability >= 8, or a CPU with
AMX-BF16 or AVX512-BF16), and in float32 otherwise, since emulated bfloat16 is slower than
float32. Convolutions use the channels_last memory format on both.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import Callable, Iterator

import torch

__all__ = ["resolve_device", "avx512_kernels", "bf16_supported", "autocast", "prepare_model", "torch_threads", "compute_dtype", "synchronize", "best_time", "matmul_gflops"]

logger = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device (use --device auto or cpu)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ValueError(f"unknown device '{name}': use auto, cpu or cuda")
    return torch.device(name)


@functools.lru_cache(maxsize=None)
def avx512_kernels() -> bool:
    """Whether torch runs its AVX512 CPU kernels: not on a CPU without AVX512, nor where they are
    held back (``ATEN_CPU_CAPABILITY=avx2``, which gives the kernels an AVX2-only CPU runs)."""
    return torch.backends.cpu.get_cpu_capability() == "AVX512"


@functools.lru_cache(maxsize=None)
def _cpu_has_native_bf16() -> bool:
    """The CPU has AMX-BF16 or AVX512-BF16, and torch and oneDNN run the kernels that use them.

    The second half matters where the kernels are held back (``ATEN_CPU_CAPABILITY=avx2``,
    ``ONEDNN_MAX_CPU_ISA=AVX2``, as on an AVX2 machine): bfloat16 would then be emulated.
    """
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    if "amx_bf16" not in flags and "avx512_bf16" not in flags:
        return False
    return avx512_kernels() and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def bf16_supported(device: torch.device) -> bool:
    """Whether bfloat16 autocast is native (fast) on ``device``."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and _cpu_has_native_bf16()


def compute_dtype(device: torch.device) -> torch.dtype:
    """The dtype networks compute in on ``device``: bfloat16 where native, else float32."""
    return torch.bfloat16 if bf16_supported(device) else torch.float32


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op on the CPU), so that a clock reads its end."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def best_time(fn: Callable[[], object], repeat: int, device: torch.device) -> float:
    """The shortest of ``repeat`` wall times of ``fn()`` in seconds, the device synchronised."""
    best = float("inf")
    for _ in range(repeat):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return best


def matmul_gflops(dtype: torch.dtype, device: torch.device, repeat: int = 3) -> float:
    """The best rate of one square ``torch.mm`` in GFLOP/s over ``repeat`` runs (at least 3): the
    machine's practical matrix-multiply peak in ``dtype`` (small on CPUs where the dtype is emulated)."""
    n = 4096 if device.type == "cuda" else (2048 if dtype == torch.float32 or bf16_supported(device) else 512)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up: library set-up, kernel choice
    return 2 * n**3 / best_time(lambda: a @ b, max(repeat, 3), device) / 1e9


@contextlib.contextmanager
def autocast(device: torch.device, enabled: bool = True) -> Iterator[None]:
    """bfloat16 autocast where native, a no-op elsewhere."""
    if enabled and bf16_supported(device):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
            yield
    else:
        yield


def prepare_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """Move to ``device`` in channels_last (convolutions run faster in it on CPU and GPU)."""
    return model.to(device=device, memory_format=torch.channels_last)


@contextlib.contextmanager
def torch_threads(num_threads: int | None) -> Iterator[None]:
    """Run a block with ``num_threads`` torch CPU threads (None: unchanged), restoring the count after."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
