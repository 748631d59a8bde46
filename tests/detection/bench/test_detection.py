"""`rcnn bench detection` end to end on a tiny configuration of the built-in data."""

import json
import shutil
import time

import numpy as np
import pytest
import torch

from detection.cli import main
from tests.conftest import REPO

TINY = [
    "data.train=synthetic:8:0", "data.test=synthetic:4:1",
    "proposals.selective_search.max_side=128", "proposals.top_k=20", "proposals.chunk_size=4",
    "multibox.num_priors=12", "multibox.input_size=64", "multibox.backbone.width=0.125", "multibox.backbone.batch_norm=true",
    "multibox.epochs=1", "multibox.batch_size=8", "multibox.top_k=20",
    "classifier.crop_size=32", "classifier.width=0.125", "classifier.batch_norm=true", "classifier.aux_logits=false",
    "train.epochs=1", "train.batch_size=32", "train.members=2", "train.lr=0.05", "train.num_threads=1",
    "detection.score_threshold=0.0", "bench.bootstrap_resamples=20", "bench.gallery_images=2", "device=cpu",
]


def _args(out, *extra):
    args = ["bench", "detection", "--out", str(out)]
    for override in TINY:
        args += ["--set", override]
    return args + list(extra)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "run"
    assert main(_args(out)) == 0
    return out


@pytest.mark.slow
def test_bench_detection_end_to_end_resume_and_refusal(tiny_run, capsys):
    out = tiny_run
    printed = (out / "report.md").read_text()
    assert "Single model vs ensemble" in printed and "| ensemble | 2 |" in printed
    report = json.loads((out / "report.json").read_text())
    assert {"proposals", "single", "ensemble", "ensemble_size_curve", "bootstrap", "timings", "speed"} <= set(report)
    assert len(report["single"]) == 2 and 0.0 <= report["ensemble"]["map"] <= 1.0
    assert report["proposals"]["all"]["boxes_per_image"] > 0 and "multibox" in report["proposals"]
    for row in report["proposals"].values():  # average recall (IoU 0.50:0.95) lies below recall@0.5
        assert 0.0 <= row["average_recall"] <= row["recall_50"]
    assert "AR (0.5:0.95)" in printed
    for name in ("member0.json", "member1.json", "ensemble.json"):
        assert (out / "detections" / name).is_file()
    assert (out / "ensemble_size.png").is_file() and list((out / "gallery").glob("*.png"))
    # The ensemble's error analysis: its table in report.md, its numbers in report.json, its figure.
    assert "## Error analysis (ensemble, test proposals)" in printed and "| **mean** |" in printed
    analysis = report["error_analysis"]
    assert analysis["protocol"] == report["protocol"] and analysis["map"] == report["ensemble"]["map"] and analysis["with_proposals"]
    assert (out / "fp_types.png").stat().st_size > 1000
    # Speed: training windows/s from the members' epoch records, shares of the measured peak.
    speed = report["speed"]
    history = torch.load(out / "members" / "member1.pt", weights_only=True)["extra"]["history"]
    assert speed["training_windows_per_second_per_member"][1] == pytest.approx(sum(e["windows"] for e in history) / sum(e["seconds"] for e in history))
    assert speed["training_gflop_per_window"] == pytest.approx(3 * speed["scoring_gflop_per_crop"]) and speed["scoring_gflop_per_crop"] > 0
    assert speed["matmul_peak_gflops"] > 0 and speed["dtype"] in ("bfloat16", "float32")
    assert 0 < speed["training_percent_of_peak"] < 100 and 0 < speed["scoring_percent_of_peak"] < 100
    assert "windows/s over all members" in printed and "% of the peak" in printed
    first = (out / "members" / "member0.pt").stat().st_mtime_ns
    # A rerun reuses every stage.
    assert main(_args(out)) == 0
    assert (out / "members" / "member0.pt").stat().st_mtime_ns == first
    # ... and so does a copy of the run directory (its proposal stores name the old MultiBox path).
    moved = out.parent / "moved"
    shutil.copytree(out, moved)
    assert main(_args(moved)) == 0
    assert (moved / "members" / "member0.pt").stat().st_mtime_ns == first
    for name in ("proposals/train/meta.json", "proposals/test/meta.json", "detections/ensemble.json"):
        assert (moved / name).read_bytes() == (out / name).read_bytes(), name
    # Another config is refused; --force redoes only what depends on the change.
    capsys.readouterr()
    assert main(_args(out, "--set", "detection.nms_iou=0.5")) == 2
    assert "made with another config" in capsys.readouterr().err
    timings = json.loads((out / "timings.json").read_text())
    assert main(_args(out, "--set", "detection.nms_iou=0.5", "--force")) == 0
    assert (out / "members" / "member0.pt").stat().st_mtime_ns == first
    redone = json.loads((out / "timings.json").read_text())
    assert redone["members"] == {**timings["members"], "last_run_seconds": redone["members"]["last_run_seconds"]}
    assert redone["scoring"]["seconds"] == redone["scoring"]["last_run_seconds"]  # scored again: its own time


@pytest.mark.slow
def test_readme_api_example_runs_on_a_run_directory(tiny_run, capsys):
    """The README's Python example, pointed at a tiny run directory."""

    out = tiny_run
    readme = (REPO / "README.md").read_text()
    code = readme.split("<!-- api-example -->\n```python\n", 1)[1].split("```", 1)[0]
    assert code.count("\n") <= 6
    capsys.readouterr()
    exec(code.replace('"runs/demo"', repr(str(out))), {})
    printed = capsys.readouterr().out.strip()
    assert printed.startswith("[")


@pytest.mark.slow
def test_classification_track_on_object_crops(tiny_run, tmp_path, capsys):
    args = ["bench", "classification", "--data", "synthetic:4:1", "--checkpoints", str(tiny_run / "members"),
            "--crops", "1", "10", "144", "--max-items", "6", "--device", "cpu", "--out", str(tmp_path)]
    assert main(args) == 0
    table = capsys.readouterr().out
    assert "| models | crops | cost | top-1 error | top-1 vs base | top-5 error | top-5 vs base |" in table
    report = json.loads((tmp_path / "classification.json").read_text())
    cells = {(row["models"], row["crops"]) for row in report["rows"]}
    assert cells == {(1, 1), (1, 10), (1, 144), (2, 1), (2, 10), (2, 144)}
    assert all(0.0 <= row["top1"] <= 1.0 and row["top5"] <= row["top1"] for row in report["rows"])
    assert report["items"] == 6
    base = report["rows"][0]
    assert all(abs(row["delta_top1"] - (row["top1"] - base["top1"])) < 1e-12 for row in report["rows"])


@pytest.mark.slow
def test_train_detect_evaluate_commands_on_a_run(tiny_run, tmp_path, capsys):
    """The stage commands one by one on the run's proposal stores, then the bad-input paths."""
    sets = [arg for override in TINY for arg in ("--set", override)]
    members = tmp_path / "members"
    assert main(["train", "--data", "synthetic:8:0", "--proposals", str(tiny_run / "proposals" / "train"), "--members", "1", "--out", str(members), *sets]) == 0
    assert (members / "member0.pt").is_file()
    dets = tmp_path / "dets.json"
    assert main(["detect", "--data", "synthetic:4:1", "--proposals", str(tiny_run / "proposals" / "test"), "--checkpoints", str(members), "--out", str(dets), "--device", "cpu", *sets]) == 0
    assert dets.is_file() and (tmp_path / "dets.scores" / "meta.json").is_file()
    capsys.readouterr()
    assert main(["evaluate", "--gt", "synthetic:4:1", "--detections", str(dets)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith("mAP: ")
    # Proposals of another dataset, members of another class list, unknown members: clear errors.
    assert main(["detect", "--data", "synthetic:5:1", "--proposals", str(tiny_run / "proposals" / "test"), "--checkpoints", str(members), "--out", str(tmp_path / "x.json"), *sets]) == 2
    assert "different dataset" in capsys.readouterr().err
    assert main(["detect", "--data", "synthetic:4:1", "--proposals", str(tiny_run / "proposals" / "test"), "--checkpoints", str(members), "--members", "0,3", "--out", str(tmp_path / "x.json"), *sets]) == 2
    assert "no checkpoint for member(s) [3]" in capsys.readouterr().err
    from classifiers.ensemble import Ensemble
    from detection.core.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="trained for classes"):
        Ensemble.from_dir(members, ["cat", "dog"], device="cpu")


@pytest.mark.slow
def test_detect_with_compile_scores_through_the_compiled_warp(tiny_run, tmp_path, eager_compile):
    """``detection.compile``: members and warp go through torch.compile (eager stand-ins here:
    the real compile is tested in tests/classifiers/test_scoring.py), with the same scores."""
    import numpy as np

    from detection.data.datasets import load_dataset
    from detection.pipeline import load_member_scores

    warped = eager_compile
    common = ["detect", "--data", "synthetic:4:1", "--proposals", str(tiny_run / "proposals" / "test"), "--checkpoints",
              str(tiny_run / "members"), "--device", "cpu", *_sets(TINY)]
    assert main([*common, "--out", str(tmp_path / "plain.json")]) == 0
    assert warped == []
    assert main([*common, "--out", str(tmp_path / "compiled.json"), "--set", "detection.compile=true"]) == 0
    dataset = load_dataset("synthetic:4:1")
    plain = load_member_scores(tmp_path / "plain.scores", dataset, [0, 1])
    compiled = load_member_scores(tmp_path / "compiled.scores", dataset, [0, 1])
    assert sum(warped) == sum(len(boxes) for boxes in plain.boxes) > 0
    # On a CPU with AMX the compiled path cuts its crops in bfloat16: close, not equal.
    for a, b in zip(plain.probabilities, compiled.probabilities):
        np.testing.assert_allclose(a.astype(np.float32), b.astype(np.float32), atol=0.03)


# ----------------------------------------------------------------------------- box regression

REGRESSION = ["box_regression.enabled=true", "box_regression.min_samples_per_class=2", "box_regression.max_samples_per_class=50"]


def _sets(overrides):
    return [argument for override in overrides for argument in ("--set", override)]


def test_box_regression_adds_a_row_moves_boxes_and_redoes_only_its_stages(tmp_path):
    """The TINY run with box regression on: its own row and file, moved boxes, and a --force
    after a box_regression change refits the regressors without retraining the members."""
    out = tmp_path / "run"
    assert main(_args(out, *_sets(REGRESSION))) == 0
    assert "| ensemble + box regression | 2 |" in (out / "report.md").read_text()
    report = json.loads((out / "report.json").read_text())
    regressed = report["ensemble_box_regression"]
    assert regressed["label"] == "ensemble + box regression" and regressed["members"] == [0, 1] and 0.0 <= regressed["map"] <= 1.0
    assert "box_regression" in report["timings"]
    assert sorted(p.name for p in (out / "members").glob("box_regressor*.pt")) == ["box_regressor0.pt", "box_regressor1.pt"]

    def boxes(name):
        return {(d["image_id"], d["label"], tuple(round(v, 3) for v in d["box"])) for d in json.loads((out / "detections" / name).read_text())}

    plain, moved = boxes("ensemble.json"), boxes("ensemble_box_regression.json")
    assert plain and moved and len(plain & moved) < 0.1 * len(moved)

    member = (out / "members" / "member0.pt").stat().st_mtime_ns
    regressor = (out / "members" / "box_regressor0.pt").stat().st_mtime_ns
    assert main(_args(out, *_sets(REGRESSION + ["box_regression.ridge_lambda=10"]), "--force")) == 0
    assert (out / "members" / "member0.pt").stat().st_mtime_ns == member
    assert (out / "members" / "box_regressor0.pt").stat().st_mtime_ns != regressor
    assert json.loads((out / "report.json").read_text())["config"]["box_regression"]["ridge_lambda"] == 10.0

    # The Python API applies the run's regressors: its boxes are the ensemble + box regression ones.
    from detection.api import Detector
    from detection.data.datasets import load_dataset

    detector = Detector.from_run(out)
    assert detector.ensemble.regressors is not None
    test_set = load_dataset("synthetic:4:1")
    record = test_set[0]
    result = detector(test_set.load_image(record))
    regressed_top = max((d for d in json.loads((out / "detections" / "ensemble_box_regression.json").read_text()) if d["image_id"] == record.image_id), key=lambda d: d["score"])
    # These barely trained members score near-uniformly, so the ranking among near-ties depends
    # on how crops are batched: compare the top score, and the boxes with and without regressors.
    assert result.scores[0] == pytest.approx(regressed_top["score"], abs=1e-3)
    detector.ensemble.regressors = None
    plain = detector(test_set.load_image(record))
    assert plain.scores[0] == pytest.approx(result.scores[0], abs=1e-3)
    assert not np.allclose(np.sort(plain.boxes, axis=0)[:20], np.sort(result.boxes, axis=0)[:20], atol=0.05)


def test_stage_inputs_of_box_regression(tmp_path):
    """What --force removes when the box_regression section changes (no stage runs here)."""
    import yaml

    from detection.bench.detection import _prepare_run_dir
    from detection.config import load_config

    run = tmp_path / "run"
    outputs = ["detections/ensemble.json", "members/box_regressor0.pt", "members/member0.pt", "multibox/multibox.pt", "proposals/train/meta.json"]
    upstream = outputs[2:]

    def populate():
        for name in outputs:
            (run / name).parent.mkdir(parents=True, exist_ok=True)
            (run / name).write_text("x")

    def left():
        return sorted(str(p.relative_to(run)) for p in run.rglob("*") if p.is_file() and p.name != "config.yaml")

    _prepare_run_dir(run, load_config(None, ["box_regression.enabled=true"]), force=False)
    populate()
    with pytest.raises(ValueError, match="sections differ: box_regression"):
        _prepare_run_dir(run, load_config(None, ["box_regression.enabled=true", "box_regression.ridge_lambda=5"]), force=False)
    # A new penalty: the regressors and the detections go, the members stay.
    _prepare_run_dir(run, load_config(None, ["box_regression.enabled=true", "box_regression.ridge_lambda=5"]), force=True)
    assert left() == upstream
    populate()
    # Switched off: the same.
    _prepare_run_dir(run, load_config(None, ["box_regression.ridge_lambda=5"]), force=True)
    assert left() == upstream
    populate()
    # The other fields of a switched-off section change nothing that ran.
    _prepare_run_dir(run, load_config(None, ["box_regression.ridge_lambda=7"]), force=True)
    assert left() == outputs
    # A run directory made before the section existed is the same config as the default.
    stored = yaml.safe_load((run / "config.yaml").read_text())
    del stored["box_regression"]
    (run / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    _prepare_run_dir(run, load_config(None), force=False)
    assert left() == outputs
    # So is one made before a field of a section existed (train.init), while the field is at its
    # default; set otherwise, the field makes it another config.
    stored = yaml.safe_load((run / "config.yaml").read_text())
    del stored["train"]["init"]
    (run / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    _prepare_run_dir(run, load_config(None), force=False)
    assert left() == outputs and yaml.safe_load((run / "config.yaml").read_text())["train"]["init"] == "shared"
    (run / "config.yaml").write_text(yaml.safe_dump(stored, sort_keys=False))
    with pytest.raises(ValueError, match="sections differ: train"):
        _prepare_run_dir(run, load_config(None, ["train.init=member"]), force=False)


@pytest.mark.slow
def test_a_truncated_jpeg_is_used_by_every_stage_with_one_warning(voc_with_truncated_jpeg, tmp_path, caplog, capsys):
    """A JPEG missing its last 30%: proposals, training windows, member and MultiBox training,
    detections and the gallery (``rcnn show``) all use it; one line names the file, and each
    stage's summary counts it."""
    import logging

    from classifiers.sampling import build_training_windows
    from detection.data.datasets import load_dataset
    from detection.data.detection_files import read_detections
    from detection.data.images import TRUNCATED_IMAGE
    from proposals.store import ProposalStore

    root, cut_id = voc_with_truncated_jpeg
    spec = f"voc:{root}:all"
    out = tmp_path / "run"
    args = ["bench", "detection", "--out", str(out)]
    for override in TINY:
        if not override.startswith("data."):
            args += ["--set", override]
    with caplog.at_level(logging.INFO):
        assert main(args + ["--set", f"data.train={spec}", "--set", f"data.test={spec}"]) == 0
        assert main(["show", "--data", spec, "--images", cut_id, "--out", str(tmp_path / "show")]) == 0
    dataset = load_dataset(spec)
    proposals = ProposalStore.open(out / "proposals" / "train", dataset).load_all()
    assert not proposals[cut_id].error and len(proposals[cut_id].boxes) > 0
    windows, _ = build_training_windows(dataset, proposals)
    assert any(w.index == 0 and len(w.bg_boxes) + len(w.fg_boxes) > 0 and w.used_proposals for w in windows)
    detections = read_detections(out / "detections" / "ensemble.json", dataset)
    assert (detections.image_ids == cut_id).sum() > 0
    assert (tmp_path / "show" / f"{cut_id}.png").is_file() and (out / "gallery" / f"{cut_id}.png").is_file()
    messages = [record.getMessage() for record in caplog.records]
    assert sum(f"{cut_id}.jpg" in message for message in messages) == 1  # named once, in this process
    counted = [m for m in messages if f"{TRUNCATED_IMAGE} x1" in m]
    for stage in ("multibox training", "(training)", "detect ", "show "):
        assert any(stage in m for m in counted), stage
    assert sum("1 truncated image(s) decoded in part" in m for m in messages) == 2  # train and test proposals


def test_a_resumed_stage_keeps_the_time_of_the_run_that_did_its_work(tmp_path):
    from detection.bench.detection import _Timer

    path = tmp_path / "timings.json"
    path.write_text(json.dumps({"members": {"seconds": 2800.0, "last_run_seconds": 2800.0}, "scoring": {"seconds": 10.0}}))
    timer = _Timer(path)
    timer.run("members", lambda: time.sleep(0.05))  # found every member trained: loading them is quick
    assert timer.times["members"]["seconds"] == 2800.0 and timer.times["members"]["last_run_seconds"] >= 0.05
    timer.run("box_regression", lambda: time.sleep(0.05))  # no entry: this run did the work, however short
    assert 0.05 <= timer.times["box_regression"]["seconds"] == timer.times["box_regression"]["last_run_seconds"]
    assert json.loads(path.read_text())["members"]["seconds"] == 2800.0

    # --force redoes the members and everything after them: their times go, the earlier ones stay.
    path.write_text(json.dumps({name: {"seconds": 5.0} for name in ("multibox", "proposals_train", "proposals_test", "members", "box_regression", "scoring")}))
    _Timer(path).forget(["members", "box_regression", "detections"])
    assert set(json.loads(path.read_text())) == {"multibox", "proposals_train", "proposals_test"}
    timer = _Timer(path)
    timer.run("members", lambda: None)
    assert timer.times["members"]["seconds"] < 1.0  # the rerun's own time, not the forgotten one
