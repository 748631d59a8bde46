"""``rcnn train`` and ``rcnn detect`` under torchrun (2 CPU processes, gloo), and the single-process defaults."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pytest
import torch

from classifiers.region_classifier import load_member
from classifiers.train import rank_share
from detection.cli import main
from detection.core import distributed
from detection.data.datasets import load_dataset
from tests.conftest import REPO

DATA = "synthetic:6:0"
TINY = [
    "classifier.crop_size=32", "classifier.width=0.125", "classifier.batch_norm=true",
    "train.epochs=1", "train.batch_size=16", "train.images_per_batch=2", "train.members=2", "train.lr=0.05",
    # 3 chunks of 2 images: rank 0 scores chunks 0 and 2, rank 1 chunk 1.
    "detection.chunk_images=2", "detection.score_threshold=0.0", "device=cpu",
]
TORCHRUN_TIMEOUT_S = 300


def _sets(overrides: list[str]) -> list[str]:
    return [argument for override in overrides for argument in ("--set", override)]


def _environment() -> dict[str, str]:
    """One thread per process (the machine may have two cores in all) and the checkout importable."""
    environment = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    environment["OMP_NUM_THREADS"] = "1"
    environment["PYTHONPATH"] = os.pathsep.join([str(REPO), environment.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return environment


def _run(arguments: list[str]) -> subprocess.CompletedProcess[str]:
    """Run ``python ARGUMENTS`` from the checkout; fail the test with its output if it fails."""
    result = subprocess.run([sys.executable, *arguments], cwd=REPO, env=_environment(), capture_output=True, text=True, timeout=TORCHRUN_TIMEOUT_S)
    assert result.returncode == 0, f"exit {result.returncode}\nstdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}"
    return result


def _torchrun(command: list[str]) -> subprocess.CompletedProcess[str]:
    """``torchrun --standalone --nproc_per_node 2 -m detection.cli COMMAND`` (torchrun is torch.distributed.run)."""
    return _run(["-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "detection.cli", *command])


class Trained(NamedTuple):
    root: Path
    proposals: Path
    members: Path
    stdout: str


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """A tiny proposal store and two members trained by two processes."""
    if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
        pytest.skip("this torch build has no torch.distributed with gloo")
    root = tmp_path_factory.mktemp("distributed")
    proposals = root / "proposals"
    assert main(["propose", "--data", DATA, "--method", "ss", "--out", str(proposals), *_sets(["proposals.selective_search.max_side=128", "proposals.chunk_size=4"])]) == 0
    members = root / "members"
    result = _torchrun(["train", "--data", DATA, "--proposals", str(proposals), "--out", str(members), *_sets(TINY)])
    return Trained(root, proposals, members, result.stdout)


@pytest.mark.slow
def test_torchrun_train_writes_loadable_members_and_a_rerun_skips_them(trained: Trained) -> None:
    members = trained.members
    # Rank 0 alone prints the summary.
    assert trained.stdout.count("members: 2 ->") == 1
    classes = load_dataset(DATA).classes
    for index in (0, 1):
        path = members / f"member{index}.pt"
        model, config, payload = load_member(path, classes)
        assert config.crop_size == 32 and not model.training
        extra = payload["extra"]
        assert extra["finished"] and extra["epoch"] == 1 and extra["world_size"] == 2
        # 6 images, 2 per batch: 3 batches an epoch, so each rank takes 2 steps (one wrapped).
        assert extra["n_averaged"] == 2 and extra["history"][0]["batches"] == 4
        with torch.no_grad():
            assert model(torch.randn(2, 3, 32, 32)).shape == (2, len(classes) + 1)
    stamps = {p.name: p.stat().st_mtime_ns for p in members.glob("member*.pt")}
    rerun = _torchrun(["train", "--data", DATA, "--proposals", str(trained.proposals), "--out", str(members), *_sets(TINY)])
    assert "member 0 already trained" in rerun.stderr and "member 1 already trained" in rerun.stderr
    assert {p.name: p.stat().st_mtime_ns for p in members.glob("member*.pt")} == stamps


@pytest.mark.slow
def test_torchrun_detect_equals_a_single_process_byte_for_byte(trained: Trained) -> None:
    root = trained.root
    common = ["detect", "--data", DATA, "--proposals", str(trained.proposals), "--checkpoints", str(trained.members), "--device", "cpu", *_sets(TINY)]
    single = _run(["-m", "detection.cli", *common, "--out", str(root / "single.json")])
    shared = _torchrun([*common, "--out", str(root / "torchrun.json")])
    assert (root / "torchrun.json").read_bytes() == (root / "single.json").read_bytes()
    summary = "members: [0, 1]  images: 6  detections: "
    assert single.stdout.count(summary) == 1 and shared.stdout.count(summary) == 1  # rank 0 alone prints
    # Every chunk was written once, by one rank or the other, and equals the single process's.
    chunks = sorted(p.name for p in (root / "single.scores").glob("chunk-*.npz"))
    assert chunks == ["chunk-00000.npz", "chunk-00001.npz", "chunk-00002.npz"]
    for name in [*chunks, "meta.json"]:
        assert (root / "torchrun.scores" / name).read_bytes() == (root / "single.scores" / name).read_bytes(), name


@pytest.mark.slow
def test_torchrun_box_regression_fits_on_rank_0_and_detects_byte_for_byte(trained: Trained) -> None:
    """Box regression on: ``train`` skips the finished members and rank 0 fits the regressors;
    ``detect`` keeps the deltas in the chunks, identical whichever rank scored them."""
    root = trained.root
    regression = _sets(["box_regression.enabled=true", "box_regression.min_samples_per_class=2"])
    _torchrun(["train", "--data", DATA, "--proposals", str(trained.proposals), "--out", str(trained.members), *_sets(TINY), *regression])
    assert sorted(p.name for p in trained.members.glob("box_regressor*.pt")) == ["box_regressor0.pt", "box_regressor1.pt"]
    common = ["detect", "--data", DATA, "--proposals", str(trained.proposals), "--checkpoints", str(trained.members), "--device", "cpu", *_sets(TINY), *regression]
    _run(["-m", "detection.cli", *common, "--out", str(root / "single_regressed.json")])
    _torchrun([*common, "--out", str(root / "torchrun_regressed.json")])
    assert (root / "torchrun_regressed.json").read_bytes() == (root / "single_regressed.json").read_bytes()
    for path in sorted((root / "single_regressed.scores").iterdir()):
        assert (root / "torchrun_regressed.scores" / path.name).read_bytes() == path.read_bytes(), path.name
    with np.load(root / "single_regressed.scores" / "chunk-00002.npz") as data:
        assert "deltas" in data.files


def test_outside_torchrun_nothing_is_initialised(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launch() is None and not distributed.under_torchrun()
    with distributed.process_group(torch.device("cpu")) as joined:
        assert joined is False
        assert not distributed.is_initialized()
        assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
        distributed.barrier()  # returns at once
        assert distributed.all_reduce_sum([1, 2.5]) == [1.0, 2.5]
        assert distributed.all_true(True) and not distributed.all_true(False)
        tensor = torch.arange(3.0)
        distributed.broadcast_([tensor])
        assert torch.equal(tensor, torch.arange(3.0))
    assert distributed.init_process_group(torch.device("cpu")) is False and not distributed.is_initialized()
    distributed.teardown()  # harmless without a group
    assert distributed.threads_per_process(3) == 3
    assert distributed.threads_per_process() == max(1, os.cpu_count() or 1)


def test_launch_is_read_from_the_torchrun_variables() -> None:
    assert distributed.launch({"RANK": "3", "LOCAL_RANK": "1", "WORLD_SIZE": "4", "LOCAL_WORLD_SIZE": "2"}) == distributed.Launch(3, 1, 4, 2)
    # Without LOCAL_WORLD_SIZE (another launcher), one machine is assumed.
    assert distributed.launch({"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "2"}) == distributed.Launch(0, 0, 2, 2)
    assert distributed.launch({"RANK": "0", "WORLD_SIZE": "2"}) is None


@pytest.mark.parametrize("total, world", [(3, 2), (4, 2), (7, 3), (1, 2), (5, 1)])
def test_rank_shares_cover_the_epoch_with_equal_step_counts(total: int, world: int) -> None:
    epoch = lambda: iter(range(total))  # noqa: E731
    shares = [list(rank_share(epoch, total, rank, world)) for rank in range(world)]
    assert len({len(share) for share in shares}) == 1 and len(shares[0]) == -(-total // world)
    assert [share[: len(range(rank, total, world))] for rank, share in enumerate(shares)] == [list(range(rank, total, world)) for rank in range(world)]
    assert sorted({b for share in shares for b in share}) == list(range(total))
    if world == 1:
        assert shares[0] == list(range(total))
