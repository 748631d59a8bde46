"""detection.core.progress: tqdm bars on a terminal, plain lines (no carriage returns) elsewhere."""

from __future__ import annotations

import io

import pytest
from tqdm import tqdm

from detection.core.progress import PlainProgress, progress_bar


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_redirected_stream_gets_one_plain_line_per_stage() -> None:
    stream = io.StringIO()
    items = list(progress_bar(range(7), desc="scoring", unit="img", stream=stream))
    assert items == list(range(7))
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith("scoring: 7/7 img in ") and text.endswith("\n")


def test_update_total_postfix_and_close_once() -> None:
    stream = io.StringIO()
    bar = progress_bar(total=4, desc="proposals (ss)", unit="img", stream=stream)
    assert isinstance(bar, PlainProgress)
    bar.update(3)
    bar.set_postfix(loss="0.123")
    bar.update()
    bar.close()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("proposals (ss): 4/4 img in ") and lines[0].endswith(", loss=0.123")


def test_long_stages_write_a_line_per_interval_and_epoch_bars_no_closing_line() -> None:
    stream = io.StringIO()
    for _ in progress_bar(range(3), total=3, desc="member 0 epoch 1/2", unit="batch", leave=False, stream=stream, interval=0.0):
        pass
    lines = stream.getvalue().splitlines()
    # interval 0: a line after each step with the share done; leave=False: no closing line
    assert [line.split(" in ")[0] for line in lines] == [
        "member 0 epoch 1/2: 1/3 batch (33%)",
        "member 0 epoch 1/2: 2/3 batch (67%)",
        "member 0 epoch 1/2: 3/3 batch (100%)",
    ]
    assert "\r" not in stream.getvalue()
    quiet = io.StringIO()
    for _ in progress_bar(range(3), desc="epoch", leave=False, stream=quiet):
        pass
    assert quiet.getvalue() == ""


def test_a_terminal_keeps_the_tqdm_bar_and_disable_writes_nothing() -> None:
    terminal = _Terminal()
    bar = progress_bar(range(3), desc="scoring", stream=terminal)
    assert isinstance(bar, tqdm)
    list(bar)
    assert "\r" in terminal.getvalue()
    stream = io.StringIO()
    assert list(progress_bar(range(3), disable=True, stream=stream)) == [0, 1, 2]
    assert stream.getvalue() == ""


def test_a_stage_writes_readable_lines_to_redirected_stderr(capsys: pytest.CaptureFixture[str]) -> None:
    from detection.data.datasets import load_dataset
    from detection.simulate import simulate_detections
    from eval.compare import bootstrap_map_difference

    dataset = load_dataset("synthetic:6:0")
    detections = simulate_detections(dataset, seed=0)
    bootstrap_map_difference(dataset, detections, detections, "voc12", resamples=12, progress=True)
    err = capsys.readouterr().err  # pytest's capture is not a terminal, like a log file
    assert "\r" not in err and "bootstrap: 12/12 it in " in err
