"""The end-to-end detection benchmark: propose -> train members -> detect -> evaluate -> report.

A run directory holds every stage's output, so a rerun reuses what is there::

    RUNDIR/config.yaml                 the resolved config of the run
    RUNDIR/multibox/multibox.pt        MultiBox trained on the training set (when used)
    RUNDIR/proposals/{train,test}/     proposal stores
    RUNDIR/members/member{i}.pt        the region classifiers
    RUNDIR/members/box_regressor{i}.pt their box regressors (only with box_regression.enabled)
    RUNDIR/detections/scores/          per-member probabilities of every test proposal
    RUNDIR/detections/*.json           detections of the ensemble and of each member alone
    RUNDIR/timings.json                wall time of each stage when it last ran
    RUNDIR/report.md, report.json      the tables (with the ensemble's error analysis); plots and a gallery beside them

A run directory made with another config is refused unless ``force``; with ``force`` only the
stages whose inputs changed are deleted and redone. A stage that fails leaves the outputs of the
stages before it in place, and every stage resumes its own partial work. A section that a run
directory's config.yaml lacks because it was added to the code later (``box_regression``) counts
as its default, so older run directories stay usable.

Box regression (not in the paper, off by default): with ``box_regression.enabled`` a stage fits
each member's regressor after the members (:mod:`classifiers.box_regression`), scoring keeps the
members' deltas, and the single-vs-ensemble table gains an "ensemble + box regression" row
(``detections/ensemble_box_regression.json``, ``report.json["ensemble_box_regression"]``; null
when off). The single members, the ensemble row, the size curve and the bootstrap stay without
regression, as in the paper.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import resource
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from classifiers.box_regression_train import fit_box_regressors
from classifiers.inception_cost import forward_gflop, training_gflop
from classifiers.train import member_path, train_members, training_history
from detection.config import Config, to_dict
from detection.core.atomic import write_json, write_text
from detection.core.devices import compute_dtype, matmul_gflops, resolve_device
from detection.data.datasets import load_dataset
from detection.data.detection_files import write_detections
from detection.data.records import Dataset, Detections
from detection.pipeline import MemberScores, detections_from_scores, score_dataset
from detection.visualize import write_gallery
from eval.analysis import analyze_errors
from eval.analysis_report import format_summary, plot_fp_types
from eval.compare import bootstrap_map_difference, ensemble_size_curve, plot_size_curve
from eval.detection import PROTOCOLS, evaluate
from eval.recall import proposal_recall
from proposals.multibox_train import train_multibox
from proposals.propose import run_proposals
from proposals.store import SOURCES, ProposalStore

__all__ = ["run_detection_benchmark", "STAGE_INPUTS"]

logger = logging.getLogger(__name__)

# The config sections each stage's output depends on (a change redoes the stage and its followers).
STAGE_INPUTS: dict[str, tuple[str, ...]] = {
    "multibox": ("seed", "data.train", "multibox"),
    "proposals": ("seed", "data", "multibox", "proposals"),
    "members": ("seed", "data.train", "multibox", "proposals", "classifier", "train"),
    "box_regression": ("seed", "data.train", "multibox", "proposals", "classifier", "train", "box_regression"),
    "detections": ("seed", "data", "multibox", "proposals", "classifier", "train", "box_regression", "detection"),
}
# What each stage leaves in the run directory, as globs: the regressors live beside the members.
STAGE_OUTPUTS = {
    "multibox": "multibox",
    "proposals": "proposals",
    "members": "members",
    "box_regression": "members/box_regressor*.pt",
    "detections": "detections",
}


def _section(values: dict[str, Any], dotted: str) -> Any:
    """The value of a dotted key; a section switched off (``enabled: false``) counts as absent,
    so that editing its other fields redoes nothing."""
    node: Any = values
    for key in dotted.split("."):
        node = node.get(key) if isinstance(node, dict) else None
    if isinstance(node, dict) and node.get("enabled") is False:
        return None
    return node


def _with_new_fields(stored: dict[str, Any], current: dict[str, Any], defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """``stored`` plus the keys it lacks, at any depth, whose current value is their default.

    Such a key was added to the code after the run directory was made (the ``box_regression``
    section, ``train.init``); at its default it changes nothing that ran, so it must not make the
    directory "another config".
    """
    defaults = to_dict(Config()) if defaults is None else defaults
    merged = dict(stored)
    for key, value in current.items():
        default = defaults.get(key)
        if key not in stored:
            if value == default:
                merged[key] = value
        elif isinstance(value, dict) and isinstance(stored[key], dict) and isinstance(default, dict):
            merged[key] = _with_new_fields(stored[key], value, default)
    return merged


# The timed stages (timings.json) -> the stage of STAGE_INPUTS whose outputs they make.
TIMED_STAGES = {
    "multibox": "multibox",
    "proposals_train": "proposals",
    "proposals_test": "proposals",
    "members": "members",
    "box_regression": "box_regression",
    "scoring": "detections",
}


def _remove_outputs(run_dir: Path, stage: str) -> None:
    for target in sorted(run_dir.glob(STAGE_OUTPUTS[stage])):
        logger.warning("--force: removing %s (its inputs changed)", target)
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()


def _prepare_run_dir(run_dir: Path, config: Config, force: bool) -> None:
    """Refuse a run directory of another config, or (``force``) clear the stages it invalidates."""
    path = run_dir / "config.yaml"
    current = to_dict(config)
    if path.is_file():
        stored = _with_new_fields(yaml.safe_load(path.read_text()) or {}, current)
        if stored != current:
            changed = sorted({key for key in set(stored) | set(current) if stored.get(key) != current.get(key)})
            if not force:
                raise ValueError(
                    f"{run_dir}: made with another config (sections differ: {', '.join(changed)}); "
                    "use another --out, or --force to redo the stages that depend on them"
                )
            stale = [stage for stage, inputs in STAGE_INPUTS.items() if any(_section(stored, k) != _section(current, k) for k in inputs)]
            first = min((list(STAGE_INPUTS).index(s) for s in stale), default=len(STAGE_INPUTS))
            redone = list(STAGE_INPUTS)[first:]
            for stage in redone:
                _remove_outputs(run_dir, stage)
            _Timer(run_dir / "timings.json").forget(redone)
    write_text(path, yaml.safe_dump(current, sort_keys=False))


class _Timer:
    """Stage wall times, kept in timings.json so a resumed run still reports them.

    A stage's entry is written when it finishes, and only ``--force`` removes its outputs (and
    then its entry, see :meth:`forget`). A stage that has an entry therefore found its work done
    when it runs again: it keeps the time of the run that did the work (``seconds``), and
    ``last_run_seconds`` says what this run spent (loading six finished members: a second).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.times: dict[str, dict[str, float]] = json.loads(path.read_text()) if path.is_file() else {}

    def run(self, stage: str, function: Callable[[], Any]) -> Any:
        started = time.perf_counter()
        result = function()
        seconds = time.perf_counter() - started
        if stage in self.times:
            self.times[stage]["last_run_seconds"] = seconds
        else:
            self.times[stage] = {"seconds": seconds, "last_run_seconds": seconds}
        write_json(self.path, self.times)
        return result

    def forget(self, stages: list[str]) -> None:
        """Drop the times of the timed stages that make the outputs of ``stages`` (being redone)."""
        dropped = [timed for timed, stage in TIMED_STAGES.items() if stage in stages and timed in self.times]
        for timed in dropped:
            del self.times[timed]
        if dropped:
            write_json(self.path, self.times)


@dataclass
class _Outcome:
    label: str
    members: list[int]
    map: float
    per_protocol: dict[str, float] = field(default_factory=dict)
    per_class: dict[str, float] = field(default_factory=dict)


@dataclass
class _Run:
    """What every stage of one benchmark run needs."""

    config: Config
    run_dir: Path
    device: str
    progress: bool
    timer: _Timer
    train_set: Dataset
    test_set: Dataset


def run_detection_benchmark(config: Config, run_dir: str | Path, force: bool = False, device: str | None = None, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) every stage for ``config`` in ``run_dir``; write and return the report."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    _prepare_run_dir(run_dir, config, force)
    train_set, test_set = load_dataset(config.data.train), load_dataset(config.data.test)
    if train_set.classes != test_set.classes:
        raise ValueError(f"train and test class lists differ: {train_set.classes} vs {test_set.classes}")
    run = _Run(config, run_dir, device or config.device, progress, _Timer(run_dir / "timings.json"), train_set, test_set)
    _propose(run)
    _train_members(run)
    scores = run.timer.run("scoring", lambda: _score(run))
    outcomes, ensemble, regressed, detections_of = _evaluate_models(run, scores)
    best_single = max(outcomes, key=lambda o: o.map)
    curve = _size_curve(run, scores, outcomes, ensemble)
    bootstrap = None
    if len(scores.member_ids) > 1 and config.bench.bootstrap_resamples >= 10:
        bootstrap = bootstrap_map_difference(
            test_set, detections_of["ensemble"], detections_of[best_single.label], config.evaluation.protocol, config.evaluation.iou,
            config.bench.bootstrap_resamples, config.bench.confidence, config.seed,
        )
    test_proposals = _test_proposals(run)
    test_boxes = {k: v.boxes for k, v in test_proposals.items()}
    recall_rows = _test_proposal_recall(run, test_proposals, test_boxes)
    # Error analysis of the ensemble (eval/analysis.py): error types, oracle AP, AP by size.
    analysis = analyze_errors(test_set, detections_of["ensemble"], config.evaluation.protocol, config.evaluation.iou, config.evaluation.max_dets, test_boxes)
    plot_fp_types(analysis, run_dir / "fp_types.png")
    gallery = write_gallery(test_set, run_dir / "gallery", detections=detections_of["ensemble"], max_images=config.bench.gallery_images)
    report = {
        "config": to_dict(config),
        "data": {"train": train_set.spec, "test": test_set.spec, "train_images": len(train_set), "test_images": len(test_set), "classes": test_set.classes},
        "protocol": config.evaluation.protocol,
        "iou": config.evaluation.iou,
        "proposals": {name: {"boxes_per_image": r.boxes_per_image, "recall_50": r.recall_50, "recall_70": r.recall_70, "mabo": r.mabo, "average_recall": r.average_recall} for name, r in recall_rows.items()},
        "single": [dataclasses.asdict(o) for o in outcomes],
        "ensemble": dataclasses.asdict(ensemble),
        "ensemble_box_regression": None if regressed is None else dataclasses.asdict(regressed),
        "best_single": best_single.label,
        "ensemble_size_curve": dataclasses.asdict(curve),
        "bootstrap": None if bootstrap is None else dataclasses.asdict(bootstrap),
        "error_analysis": analysis.to_json(),
        "references": [dataclasses.asdict(r) for r in config.bench.references],
        "timings": run.timer.times,
        "speed": _speed(run, scores),
    }
    write_json(run_dir / "report.json", report)
    write_text(run_dir / "report.md", _markdown(report, outcomes, ensemble, curve, report["bootstrap"], gallery, run_dir, regressed, format_summary(analysis)))
    return report


def _propose(run: _Run) -> None:
    """Stages ``multibox`` (when the proposals use it) and ``proposals_{train,test}``."""
    config, timer = run.config, run.timer
    proposal_config = config.proposals
    if proposal_config.method in ("multibox", "merged"):
        checkpoint = timer.run("multibox", lambda: train_multibox(config.multibox, run.train_set, run.run_dir / "multibox", run.device, run.progress))
        proposal_config = dataclasses.replace(proposal_config, multibox_checkpoint=str(checkpoint))
    for name, dataset in (("train", run.train_set), ("test", run.test_set)):
        summary = timer.run(
            f"proposals_{name}",
            lambda d=dataset, n=name: run_proposals(d, proposal_config, run.run_dir / "proposals" / n, workers=config.bench.workers, device="cpu", progress=run.progress),
        )
        if summary.computed:
            timer.times[f"proposals_{name}"]["seconds_per_image"] = summary.seconds_per_image


def _train_members(run: _Run) -> None:
    """Stages ``members`` and, with box regression, ``box_regression``."""
    config = run.config
    members_dir = run.run_dir / "members"
    train_proposals = ProposalStore.open(run.run_dir / "proposals" / "train", run.train_set).load_all()
    run.timer.run("members", lambda: train_members(run.train_set, train_proposals, config.classifier, config.train, members_dir, device=run.device, progress=run.progress))
    if config.box_regression.enabled:
        members = list(range(config.train.members))
        run.timer.run(
            "box_regression",
            lambda: fit_box_regressors(run.train_set, train_proposals, config.box_regression, members_dir, members, run.device, run.progress, config.train.num_threads),
        )


def _score(run: _Run) -> MemberScores:
    """Stage ``scoring``: every member's probabilities (and deltas) of every test proposal."""
    config = run.config
    return score_dataset(
        run.test_set, run.run_dir / "proposals" / "test", run.run_dir / "members", run.run_dir / "detections" / "scores",
        list(range(config.train.members)), run.device, config.detection, run.progress, config.box_regression.enabled,
    )


def _evaluate_models(run: _Run, scores: MemberScores) -> tuple[list[_Outcome], _Outcome, _Outcome | None, dict[str, Detections]]:
    """Detections and mAP under every protocol of each member alone, the ensemble and (with box
    regression) the regressed ensemble; each one's detections file is written."""
    config, test_set = run.config, run.test_set
    detections_of: dict[str, Detections] = {}

    def outcome(label: str, members: list[int], positions: list[int], box_regression: bool = False, stem: str | None = None) -> _Outcome:
        detections = detections_from_scores(scores, config.detection, positions, box_regression)
        write_detections(run.run_dir / "detections" / f"{stem or label}.json", detections, test_set.classes)
        detections_of[label] = detections
        results = {p: evaluate(test_set, detections, p, config.evaluation.iou, config.evaluation.max_dets) for p in PROTOCOLS}
        main = results[config.evaluation.protocol]
        return _Outcome(label, members, main.map, {p: r.map for p, r in results.items()}, main.per_class_ap)

    everyone = list(range(len(scores.member_ids)))
    singles = [outcome(f"member{member}", [member], [position]) for position, member in enumerate(scores.member_ids)]
    ensemble = outcome("ensemble", scores.member_ids, everyone)
    regressed = None
    if config.box_regression.enabled:
        regressed = outcome("ensemble + box regression", scores.member_ids, everyone, True, "ensemble_box_regression")
    return singles, ensemble, regressed, detections_of


def _size_curve(run: _Run, scores: MemberScores, singles: list[_Outcome], ensemble: _Outcome) -> Any:
    """mAP by ensemble size (plotted to ensemble_size.png); reuses the single and full evaluations."""
    config = run.config
    known = {(position,): o.map for position, o in enumerate(singles)}
    known[tuple(range(len(scores.member_ids)))] = ensemble.map

    def map_of_subset(subset: tuple[int, ...]) -> float:
        if subset not in known:
            detections = detections_from_scores(scores, config.detection, list(subset))
            known[subset] = evaluate(run.test_set, detections, config.evaluation.protocol, config.evaluation.iou, config.evaluation.max_dets).map
        return known[subset]

    curve = ensemble_size_curve(len(scores.member_ids), map_of_subset, config.bench.max_subsets, config.seed)
    plot_size_curve(curve, run.run_dir / "ensemble_size.png", config.evaluation.protocol)
    return curve


def _test_proposals(run: _Run) -> dict[str, Any]:
    """The stored test proposals: image id -> :class:`proposals.store.ImageProposals`."""
    return ProposalStore.open(run.run_dir / "proposals" / "test", run.test_set).load_all()


def _test_proposal_recall(run: _Run, items: dict[str, Any], boxes: dict[str, Any]) -> dict[str, Any]:
    """Recall of the test proposals (``items``; ``boxes``: their boxes), all of them and split by source."""
    rows = {"all": proposal_recall(run.test_set, boxes, "all")}
    for name, code in SOURCES.items():
        subset = {k: v.boxes[v.sources == code] for k, v in items.items()}
        if any(len(b) for b in subset.values()):
            rows[name] = proposal_recall(run.test_set, subset, name)
    return rows


def _speed(run: _Run, scores: MemberScores) -> dict[str, Any]:
    """Proposal, training and scoring speed of the run, the share of the matrix-multiply peak
    (measured now, in the dtype the networks compute in) that training and scoring reached, and
    the peak memory. GFLOP count Table 1's stages (auxiliary heads excluded)."""
    times, config = run.timer.times, run.config
    device = resolve_device(run.device)
    dtype = compute_dtype(device)
    peak = matmul_gflops(dtype, device)
    network = config.classifier.network_config(run.test_set.num_classes + 1)
    scoring_gflop = forward_gflop(network, config.classifier.crop_size)
    train_gflop = training_gflop(network, config.classifier.crop_size)
    crops_per_second = sum(len(b) for b in scores.boxes) * len(scores.member_ids) / max(times["scoring"]["seconds"], 1e-9)
    histories = [training_history(member_path(run.run_dir / "members", m)) for m in range(config.train.members)]
    per_member = [sum(e["windows"] for e in h) / max(sum(e["seconds"] for e in h), 1e-9) for h in histories]
    windows_per_second = sum(e["windows"] for h in histories for e in h) / max(times["members"]["seconds"], 1e-9)
    return {
        "proposal_seconds_per_image": {k: v.get("seconds_per_image") for k, v in times.items() if k.startswith("proposals_")},
        "scoring_seconds_per_image": times["scoring"]["seconds"] / max(len(run.test_set), 1),
        "crops_per_second": crops_per_second,
        "scoring_gflop_per_crop": scoring_gflop,
        "scoring_percent_of_peak": 100 * crops_per_second * scoring_gflop / peak,
        "training_windows_per_second": windows_per_second,
        "training_windows_per_second_per_member": per_member,
        "training_gflop_per_window": train_gflop,
        "training_percent_of_peak": 100 * windows_per_second * train_gflop / peak,
        "dtype": str(dtype).removeprefix("torch."),
        "matmul_peak_gflops": peak,
        "peak_memory_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _markdown(
    report: dict, singles: list[_Outcome], ensemble: _Outcome, curve: Any, bootstrap: Any, gallery: list[Path], run_dir: Path,
    regressed: _Outcome | None = None, analysis_table: str = "",
) -> str:
    protocol = report["protocol"]
    lines = [
        f"# Detection benchmark: {report['data']['test']}",
        "",
        f"Trained on {report['data']['train']} ({report['data']['train_images']} images), tested on "
        f"{report['data']['test_images']} images, {len(report['data']['classes'])} classes; protocol `{protocol}` at IoU {report['iou']}.",
        "",
        "## Proposals (test set)",
        "",
        "| source | boxes/image | recall@0.5 | recall@0.7 | AR (0.5:0.95) | MABO |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in report["proposals"].items():
        lines.append(f"| {name} | {row['boxes_per_image']:.1f} | {row['recall_50']:.4f} | {row['recall_70']:.4f} | {row['average_recall']:.4f} | {row['mabo']:.4f} |")
    lines += ["", "## Single model vs ensemble (the shape of the paper's Tables 4 and 5)", "", f"| model | members | mAP ({protocol}) | " + " | ".join(p for p in PROTOCOLS if p != protocol) + " |", "|---|---|---|" + "---|" * (len(PROTOCOLS) - 1)]
    for o in singles + [ensemble] + ([regressed] if regressed is not None else []):
        others = " | ".join(f"{o.per_protocol[p]:.4f}" for p in PROTOCOLS if p != protocol)
        lines.append(f"| {o.label} | {len(o.members)} | {o.map:.4f} | {others} |")
    lines += ["", "Paper (ILSVRC 2014 DET, 200 classes): single model 38.02% (Table 5), ensemble of 6: 43.9% (Table 4); ensemble gain +3.9 to +5.9 points.", ""]
    if regressed is not None:
        settings = report["config"]["box_regression"]
        lines += [
            f"Box regression (not in the paper; R-CNN style, ridge lambda {settings['ridge_lambda']:g} on each member's pooled features, "
            f"trained on windows with IoU >= {settings['fg_iou']:g}, the members' mean deltas): ensemble {ensemble.map:.4f} -> "
            f"{regressed.map:.4f} ({regressed.map - ensemble.map:+.4f}).",
            "",
        ]
    if bootstrap is not None:
        lines += [
            f"Ensemble minus best single member ({report['best_single']}): {bootstrap['difference']:+.4f}, "
            f"{bootstrap['confidence']:.0%} bootstrap interval [{bootstrap['low']:+.4f}, {bootstrap['high']:+.4f}] over "
            f"{bootstrap['resamples']} image resamples; the ensemble is better in {bootstrap['probability_a_better']:.1%} of them.",
            "",
        ]
    lines += ["## mAP by ensemble size", "", curve.table(protocol), "", "![ensemble size](ensemble_size.png)", "", "## Per-class AP (ensemble)", "", "| class | AP |", "|---|---|"]
    for name, ap in ensemble.per_class.items():
        lines.append(f"| {name} | {ap:.4f} |")
    lines += _references_table(report, ensemble, regressed)
    if analysis_table:
        lines += [
            "", "## Error analysis (ensemble, test proposals)", "",
            "AP each class would gain if one error type were fixed (oracle), recall, and coverage (the recall ceiling the proposals set); "
            "definitions in eval/analysis.py, the full tables with `rcnn analyze`.", "",
            analysis_table, "", "![false positive types](fp_types.png)",
        ]
    lines += _time_and_gallery(report, gallery, run_dir)
    return "\n".join(lines) + "\n"


def _references_table(report: dict, ensemble: _Outcome, regressed: _Outcome | None) -> list[str]:
    """Published results on the same split (the preset's ``bench.references``) beside ours."""
    references = report["references"]
    if not references:
        return []
    classes = report["data"]["classes"]
    lines = [
        "", "## Beside published results (rows marked external were not run here)", "",
        "| model | run here | mAP@0.5 | " + " | ".join(classes) + " |", "|---|---|---|" + "---|" * len(classes),
    ]
    for o in [ensemble] + ([regressed] if regressed is not None else []):
        lines.append(f"| {o.label} | yes | {o.map:.4f} | " + " | ".join(f"{o.per_class.get(c, float('nan')):.4f}" for c in classes) + " |")
    for r in references:
        cells = " | ".join(f"{r['per_class'][c]:.3f}" if c in r["per_class"] else "" for c in classes)
        lines.append(f"| {r['name']} | external | {r['map']:.3f} | {cells} |")
    sources = [f"{r['name']}: {r['source']}" for r in references if r["source"]]
    return lines + ([""] + ["Sources: " + "; ".join(sources) + "."] if sources else [])


def _time_and_gallery(report: dict, gallery: list[Path], run_dir: Path) -> list[str]:
    """The report's last sections: stage times, scoring speed, the gallery's pictures."""
    lines = ["", "## Time and speed", "", "| stage | seconds |", "|---|---|"]
    for stage, row in report["timings"].items():
        lines.append(f"| {stage} | {row['seconds']:.1f} |")
    speed = report["speed"]
    lines += [
        "",
        f"Training: {speed['training_windows_per_second']:.0f} windows/s over all members "
        f"({min(speed['training_windows_per_second_per_member']):.0f}-{max(speed['training_windows_per_second_per_member']):.0f} per member), "
        f"{speed['training_gflop_per_window']:.3f} GFLOP per window (forward and backward), {speed['training_percent_of_peak']:.1f}% of the peak.",
        "",
        f"Scoring: {speed['scoring_seconds_per_image']:.3f} s/image, {speed['crops_per_second']:.0f} crops/s (all members), "
        f"{speed['scoring_gflop_per_crop']:.3f} GFLOP per crop, {speed['scoring_percent_of_peak']:.1f}% of the peak; peak memory {speed['peak_memory_mb']:.0f} MB.",
        "",
        f"Peak: one {speed['dtype']} matrix multiply at {speed['matmul_peak_gflops']:.0f} GFLOP/s, measured as the report was written "
        "(GFLOP count Table 1's stages, auxiliary heads excluded).",
        "",
        "## Gallery (ensemble detections; green true positive, red false positive, orange missed)",
        "",
    ]
    return lines + [f"![{p.stem}]({p.relative_to(run_dir)})" for p in gallery]
