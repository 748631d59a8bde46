"""The process group of a ``torchrun`` launch: starting it, asking where we are in it, ending it.

``torchrun --nproc_per_node N -m detection.cli train|detect ...`` starts N copies of the command
and tells each, through the environment, who it is: ``RANK`` (0 .. WORLD_SIZE - 1 over all
machines), ``LOCAL_RANK`` (its index on this machine), ``WORLD_SIZE``, ``LOCAL_WORLD_SIZE`` and
the rendezvous address. :func:`init_process_group` joins them with the ``gloo`` backend on the
CPU and ``nccl`` on CUDA (where each process first takes GPU ``LOCAL_RANK``).

Everything here degrades to a single process: without the torchrun variables nothing is
initialised, :func:`rank` is 0, :func:`world_size` is 1, :func:`barrier` and the collectives do
nothing, so library code can call them unconditionally and behaves exactly as before.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch

__all__ = [
    "Launch",
    "launch",
    "under_torchrun",
    "init_process_group",
    "teardown",
    "process_group",
    "is_initialized",
    "rank",
    "world_size",
    "is_main",
    "barrier",
    "all_reduce_sum",
    "all_true",
    "broadcast_",
    "threads_per_process",
]

logger = logging.getLogger(__name__)

#: Variables torchrun sets for every process it starts; all three mark a launch. torchrun also
#: sets ``LOCAL_WORLD_SIZE`` (processes on this machine), read where present.
TORCHRUN_VARIABLES = ("RANK", "LOCAL_RANK", "WORLD_SIZE")

#: How long a collective may wait. Generous, because in ``rcnn detect`` a rank that finished its
#: share of chunks waits at the last barrier for the slowest one (gloo's default is 30 minutes).
DEFAULT_TIMEOUT = timedelta(hours=4)


@dataclass(frozen=True)
class Launch:
    """Where torchrun placed this process."""

    rank: int
    local_rank: int
    world_size: int
    local_world_size: int


def launch(environ: Mapping[str, str] | None = None) -> Launch | None:
    """This process's place in a torchrun launch, read from ``environ``; None outside torchrun."""
    environ = os.environ if environ is None else environ
    if not all(name in environ for name in TORCHRUN_VARIABLES):
        return None
    values = {name: int(environ[name]) for name in TORCHRUN_VARIABLES}
    local_world_size = int(environ.get("LOCAL_WORLD_SIZE", values["WORLD_SIZE"]))
    return Launch(values["RANK"], values["LOCAL_RANK"], values["WORLD_SIZE"], local_world_size)


def under_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this process was started by torchrun (its rank variables are set)."""
    return launch(environ) is not None


def is_initialized() -> bool:
    """Whether a default process group exists in this process."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def init_process_group(device: torch.device, timeout: timedelta = DEFAULT_TIMEOUT) -> bool:
    """Join the torchrun launch, once; returns whether this process is part of a process group.

    Outside torchrun (or when the group already exists) this does nothing beyond answering. On
    CUDA the process takes GPU ``LOCAL_RANK`` first, so ``torch.device("cuda")`` means its own
    GPU from then on, and the backend is NCCL; on the CPU it is gloo.

    Raises:
        RuntimeError: torch was built without ``torch.distributed``, or there are fewer GPUs on
            this machine than processes.
    """
    if is_initialized():
        return True
    place = launch()
    if place is None:
        return False
    if not torch.distributed.is_available():
        raise RuntimeError("started by torchrun, but this torch build has no torch.distributed")
    if device.type == "cuda":
        if place.local_rank >= torch.cuda.device_count():
            raise RuntimeError(f"LOCAL_RANK {place.local_rank} but only {torch.cuda.device_count()} CUDA device(s) here: start at most that many processes per node")
        torch.cuda.set_device(place.local_rank)
        backend = "nccl"
    else:
        backend = "gloo"
    # The rendezvous (MASTER_ADDR, MASTER_PORT) comes from the environment torchrun prepared.
    torch.distributed.init_process_group(backend=backend, init_method="env://", rank=place.rank, world_size=place.world_size, timeout=timeout)
    logger.info("process group: rank %d of %d (local rank %d), backend %s", place.rank, place.world_size, place.local_rank, backend)
    return True


def teardown() -> None:
    """Destroy the process group if this process has one (safe to call in any case)."""
    if is_initialized():
        torch.distributed.destroy_process_group()


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[bool]:
    """``with process_group(device) as distributed:`` joins a torchrun launch for the block.

    Yields whether the process group is up; it is torn down when the block ends, also on errors.
    Outside torchrun it yields False and touches nothing.
    """
    started = not is_initialized() and init_process_group(device)
    try:
        yield is_initialized()
    finally:
        if started:
            teardown()


def rank() -> int:
    """This process's rank in the group; 0 without one."""
    return torch.distributed.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Number of processes in the group; 1 without one."""
    return torch.distributed.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Whether this process writes shared files and talks to the user (rank 0, or alone)."""
    return rank() == 0


def _collective_device() -> torch.device:
    """Where the tensors of small collectives must live: NCCL only moves CUDA tensors."""
    if torch.distributed.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    """Wait until every process has arrived here; nothing without a group."""
    if not is_initialized():
        return
    if torch.distributed.get_backend() == "nccl":
        # Naming the device avoids NCCL guessing it (and warning) from the rank.
        torch.distributed.barrier(device_ids=[torch.cuda.current_device()])
    else:
        torch.distributed.barrier()


def all_reduce_sum(values: Sequence[float]) -> list[float]:
    """Element-wise sums of ``values`` over all processes (float64); ``values`` itself alone."""
    if not is_initialized():
        return [float(v) for v in values]
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=_collective_device())
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
    return tensor.cpu().tolist()


def all_true(flag: bool) -> bool:
    """Whether ``flag`` holds on every process (one tiny all-reduce); ``flag`` alone."""
    if not is_initialized():
        return flag
    tensor = torch.tensor([int(flag)], dtype=torch.int32, device=_collective_device())
    torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.MIN)
    return bool(tensor.item())


@torch.no_grad()
def broadcast_(tensors: Iterable[torch.Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values; nothing without a group.

    Tensors are packed into one flat buffer per dtype and device, so a network's hundred or so
    small batch-norm buffers cost one message each, not one message per buffer.
    """
    if not is_initialized():
        return
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for tensor in tensors:
        groups.setdefault((tensor.dtype, tensor.device), []).append(tensor)
    for group in groups.values():
        flat = torch.cat([t.reshape(-1) for t in group])
        torch.distributed.broadcast(flat, src=src)
        for tensor, part in zip(group, flat.split([t.numel() for t in group])):
            tensor.copy_(part.view_as(tensor))


def threads_per_process(configured: int | None = None) -> int:
    """Torch CPU threads for one process: ``configured`` if given, else this machine's share.

    The share is ``os.cpu_count() // LOCAL_WORLD_SIZE`` (at least 1): processes on one machine
    split its cores, so that N processes do not each start a full-size thread pool.
    """
    if configured is not None:
        return configured
    place = launch()
    local = place.local_world_size if place is not None else 1
    return max(1, (os.cpu_count() or 1) // local)
