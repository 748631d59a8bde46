"""The ``rcnn`` command: one subcommand per pipeline stage or study.

Each subcommand is a pair of functions, one adding its arguments and one running it, gathered
in ``COMMANDS``. Libraries log through :mod:`logging`; this module configures it (to stderr) and
prints results to stdout, so ``rcnn evaluate ... | tail -1`` gives the ``mAP:`` line.

``train`` and ``detect`` also run under ``torchrun --nproc_per_node N -m detection.cli ...``:
each process joins the process group (:mod:`detection.core.distributed`) for the command and takes
its share of the cores; rank 0 alone prints, writes the results and logs below warnings, and
every log line says which rank wrote it.

Each command imports its stage inside its run function, on purpose: ``rcnn propose`` starts
Selective Search workers with ``spawn``, which re-import this module, and they (like ``rcnn
evaluate``) must not pay seconds for torch.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from detection.core.problems import DataError

logger = logging.getLogger("rcnn")


# ----------------------------------------------------------------------------- evaluate


def _add_evaluate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, metavar="SPEC", help="ground-truth dataset spec, e.g. voc:ROOT:test")
    parser.add_argument("--detections", required=True, type=Path, metavar="FILE", help="detections JSON (ours, or COCO results)")
    parser.add_argument("--protocol", default="ilsvrc", choices=["ilsvrc", "voc07", "voc12", "coco50"])
    parser.add_argument("--iou", type=float, default=0.5, help="Jaccard overlap threshold (default 0.5)")
    parser.add_argument("--max-dets", type=int, default=100, help="detections per image and class kept by coco50")
    parser.add_argument("--json", type=Path, metavar="OUT", help="also write the result as JSON")


def _run_evaluate(args: argparse.Namespace) -> int:
    from detection.core.atomic import write_json
    from detection.data.datasets import load_dataset
    from detection.data.detection_files import read_detections
    from eval.detection import evaluate

    if not 0.0 < args.iou <= 1.0:
        raise SystemExit(f"rcnn evaluate: --iou must lie in (0, 1], got {args.iou}")
    dataset = load_dataset(args.gt)
    detections = read_detections(args.detections, dataset)
    result = evaluate(dataset, detections, protocol=args.protocol, iou=args.iou, max_dets=args.max_dets)
    print(result.format_table())
    if args.json:
        write_json(args.json, result.to_json())
        logger.info("wrote %s", args.json)
    return 0


# ----------------------------------------------------------------------------- analyze


def _add_analyze(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--gt", required=True, metavar="SPEC", help="ground-truth dataset spec, e.g. voc:ROOT:test")
    parser.add_argument("--detections", required=True, type=Path, metavar="FILE", help="detections JSON (ours, or COCO results)")
    parser.add_argument("--proposals", type=Path, metavar="DIR", help="proposal store of the same dataset: splits missed objects by coverage")
    parser.add_argument("--protocol", default="ilsvrc", choices=["ilsvrc", "voc07", "voc12", "coco50"])
    parser.add_argument("--iou", type=float, default=0.5, help="Jaccard overlap threshold (default 0.5)")
    parser.add_argument("--max-dets", type=int, default=100, help="detections per image and class kept by coco50")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="writes analysis.md, analysis.json and fp_types.png here")


def _run_analyze(args: argparse.Namespace) -> int:
    from detection.core.atomic import write_json, write_text
    from detection.data.datasets import load_dataset
    from detection.data.detection_files import read_detections
    from eval.analysis import analyze_errors
    from eval.analysis_report import format_analysis, format_summary, plot_fp_types
    from proposals.store import ProposalStore

    if not 0.0 < args.iou <= 1.0:
        raise SystemExit(f"rcnn analyze: --iou must lie in (0, 1], got {args.iou}")
    dataset = load_dataset(args.gt)
    detections = read_detections(args.detections, dataset)
    proposals = None
    if args.proposals:
        proposals = ProposalStore.open(args.proposals, dataset).load_boxes()
    analysis = analyze_errors(dataset, detections, args.protocol, args.iou, args.max_dets, proposals)
    write_json(args.out / "analysis.json", analysis.to_json())
    plot_fp_types(analysis, args.out / "fp_types.png")
    write_text(args.out / "analysis.md", format_analysis(analysis))
    print(format_summary(analysis))
    print(f"wrote {args.out}/analysis.md, analysis.json, fp_types.png")
    return 0


# ----------------------------------------------------------------------------- data


def _add_data(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="SPEC", help="dataset spec")
    parser.add_argument("--export-voc", type=Path, metavar="DIR", help="write the dataset as a VOC-style folder")
    parser.add_argument("--export-coco", type=Path, metavar="FILE", help="write the ground truth as COCO instances JSON")


def _run_data(args: argparse.Namespace) -> int:
    """Summarise a dataset (images, boxes per class, box sizes) and optionally export it."""
    import numpy as np

    from detection.core.atomic import write_json
    from detection.data.datasets import load_dataset, to_coco_json, write_voc

    dataset = load_dataset(args.data)
    num_boxes = np.array([r.num_boxes for r in dataset])
    counts = np.bincount(np.concatenate([r.labels for r in dataset] + [np.zeros(0, np.int64)]), minlength=dataset.num_classes)
    sides = np.concatenate([np.sqrt((r.boxes[:, 2] - r.boxes[:, 0]) * (r.boxes[:, 3] - r.boxes[:, 1])) for r in dataset] + [np.zeros(0)])
    print(f"dataset: {dataset.spec}  fingerprint {dataset.fingerprint()}")
    print(f"images: {len(dataset)}  boxes: {int(num_boxes.sum())}  boxes/image: {num_boxes.mean():.2f}  images without boxes: {int((num_boxes == 0).sum())}")
    if len(sides):
        print(f"box side sqrt(w*h): min {sides.min():.0f}  median {np.median(sides):.0f}  max {sides.max():.0f} px")
    width = max(len(name) for name in dataset.classes)
    for name, count in zip(dataset.classes, counts):
        print(f"  {name:<{width}}  {count}")
    if args.export_voc:
        ids = [r.image_id for r in dataset]
        write_voc(dataset, args.export_voc, splits={"all": ids})
        print(f"wrote VOC folder {args.export_voc} (spec voc:{args.export_voc})")
    if args.export_coco:
        write_json(args.export_coco, to_coco_json(dataset))
        print(f"wrote COCO JSON {args.export_coco} (spec coco:{args.export_coco})")
    return 0


# ----------------------------------------------------------------------------- propose


def _add_propose(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="SPEC", help="dataset spec")
    parser.add_argument("--method", choices=["ss", "multibox", "merged"], help="default: the config's (merged)")
    parser.add_argument("--ss-mode", choices=["fast", "quality", "uijlings_fast"], help="Selective Search recipe")
    parser.add_argument("--superpixel-scale", type=float, help="multiplies the graph-segmentation k (2 = the paper)")
    parser.add_argument("--multibox", metavar="CKPT", help="MultiBox checkpoint (methods multibox and merged)")
    parser.add_argument("--top-k", type=int, help="MultiBox boxes kept per image (default 200)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes on this machine")
    parser.add_argument("--shard", type=int, default=0, help="this machine's shard of the store's chunks")
    parser.add_argument("--num-shards", type=int, default=1)
    parser.add_argument("--device", default="cpu", help="device for MultiBox in a single process (auto|cpu|cuda)")
    parser.add_argument("--config", type=Path, help="YAML config whose 'proposals' section gives the defaults")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. proposals.selective_search.max_side=400")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="the proposal store directory")


def _run_propose(args: argparse.Namespace) -> int:
    from detection.config import load_config
    from detection.data.datasets import load_dataset
    from proposals.propose import proposal_config_from_args, run_proposals

    config = load_config(args.config, args.set)
    proposal_config = proposal_config_from_args(config.proposals, args.method, args.ss_mode, args.superpixel_scale, args.multibox, args.top_k)
    dataset = load_dataset(args.data)
    summary = run_proposals(dataset, proposal_config, args.out, workers=args.workers, shard=args.shard, num_shards=args.num_shards, device=args.device)
    if summary.computed == 0:
        print(f"{args.out}: nothing to compute, every chunk of this shard is already in the store")
    if summary.failed:
        print(f"failed images: {summary.failed} (no proposals; listed in {args.out}/meta.json)")
    if summary.truncated:
        print(f"truncated images: {summary.truncated} (decoded in part, with proposals; named in the log)")
    print(summary.line())
    return 0


# ----------------------------------------------------------------------------- recall


def _add_recall(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="SPEC", help="dataset spec (its ground truth is what must be covered)")
    parser.add_argument("--proposals", required=True, nargs="+", type=Path, metavar="DIR", help="one or more proposal stores")
    parser.add_argument("--labels", nargs="+", metavar="NAME", help="a name per store (default: the directory names)")
    parser.add_argument("--out", type=Path, metavar="REPORTDIR", help="write recall.md, recall.json and PNG plots here")


def _run_recall(args: argparse.Namespace) -> int:
    from detection.core.atomic import write_json, write_text
    from detection.data.datasets import load_dataset
    from eval.recall import format_recall_table, plot_recall, proposal_recall
    from proposals.store import ProposalStore

    labels = args.labels or [path.name for path in args.proposals]
    if len(labels) != len(args.proposals):
        raise ValueError(f"--labels names {len(labels)} stores but --proposals gives {len(args.proposals)}")
    dataset = load_dataset(args.data)
    results = []
    for label, directory in zip(labels, args.proposals):
        results.append(proposal_recall(dataset, ProposalStore.open(directory, dataset).load_boxes(), label=label))
    table = format_recall_table(results)
    print(table)
    if args.out:
        write_text(args.out / "recall.md", f"# Proposal recall on {dataset.spec}\n\n{table}\n\n![](recall_vs_proposals.png)\n![](recall_vs_iou.png)\n")
        write_json(args.out / "recall.json", {"dataset": dataset.spec, "stores": {r.label: r.to_json() for r in results}})
        plot_recall(results, args.out)
        print(f"wrote {args.out}/recall.md, recall.json, recall_vs_proposals.png, recall_vs_iou.png")
    for result in results:
        print(f"{result.label} recall@0.5={result.recall_50:.4f} AR={result.average_recall:.4f} boxes/image={result.boxes_per_image:.1f}")
    return 0


# ----------------------------------------------------------------------------- detect


def _add_detect(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="SPEC", help="dataset spec")
    parser.add_argument("--proposals", required=True, type=Path, metavar="DIR", help="proposal store of the same dataset")
    parser.add_argument("--checkpoints", required=True, type=Path, metavar="DIR", help="directory of member*.pt files")
    parser.add_argument("--members", default="all", help="all, a count N (the first N), or indices like 0,2,5")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--scores", type=Path, metavar="DIR", help="per-member score cache (default: OUT with .scores)")
    parser.add_argument("--config", type=Path, help="YAML config whose 'detection' section gives NMS and thresholds ('box_regression.enabled': refine boxes)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="e.g. detection.nms_iou=0.3")
    parser.add_argument("--coco", type=Path, metavar="FILE", help="also write COCO results")
    parser.add_argument("--out", required=True, type=Path, metavar="FILE", help="detections JSON")


def _run_detect(args: argparse.Namespace) -> int:
    from classifiers.ensemble import member_paths, parse_members
    from detection.config import load_config
    from detection.core import distributed
    from detection.data.datasets import load_dataset
    from detection.data.detection_files import write_coco_results, write_detections
    from detection.pipeline import detections_from_scores, fill_score_cache, load_member_scores

    config = load_config(args.config, args.set)
    dataset = load_dataset(args.data)
    members = parse_members(args.members, list(member_paths(args.checkpoints)))
    scores_dir = args.scores or args.out.with_suffix(".scores")
    with _torchrun_group(args.device, config.train.num_threads):
        # Under torchrun every rank scores its share of the chunks; the call returns when all are done.
        chosen = fill_score_cache(
            dataset, args.proposals, args.checkpoints, scores_dir, members, args.device, config.detection,
            progress=distributed.is_main(), box_regression=config.box_regression.enabled,
        )
        if not distributed.is_main():
            return 0
    scores = load_member_scores(scores_dir, dataset, chosen)
    detections = detections_from_scores(scores, config.detection, box_regression=config.box_regression.enabled)
    write_detections(args.out, detections, dataset.classes)
    if args.coco:
        write_coco_results(args.coco, detections, dataset)
    print(f"members: {scores.member_ids}  images: {len(dataset)}  detections: {len(detections)} -> {args.out}")
    return 0


# ----------------------------------------------------------------------------- show


def _add_show(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="SPEC", help="dataset spec")
    parser.add_argument("--proposals", type=Path, metavar="DIR", help="a proposal store to draw (thin blue, first 100 per image)")
    parser.add_argument("--detections", type=Path, metavar="FILE", help="detections to draw: true positives green, false positives red")
    parser.add_argument("--score-threshold", type=float, default=0.3, help="draw detections at or above this score")
    parser.add_argument("--images", nargs="+", metavar="ID", help="image ids to draw (default: the first --max-images)")
    parser.add_argument("--max-images", type=int, default=12)
    parser.add_argument("--out", required=True, type=Path, metavar="DIR")


def _run_show(args: argparse.Namespace) -> int:
    from detection.data.datasets import load_dataset
    from detection.data.detection_files import read_detections
    from detection.visualize import write_gallery
    from proposals.store import ProposalStore

    dataset = load_dataset(args.data)
    proposals = None
    if args.proposals:
        proposals = ProposalStore.open(args.proposals, dataset).load_boxes()
    detections = read_detections(args.detections, dataset) if args.detections else None
    paths = write_gallery(dataset, args.out, proposals, detections, args.images, args.score_threshold, args.max_images)
    print(f"wrote {len(paths)} PNG files to {args.out} (ground truth white, missed orange, true positives green, false positives red, proposals blue)")
    return 0


# ----------------------------------------------------------------------------- training


@contextlib.contextmanager
def _torchrun_group(device: str, num_threads: int | None) -> Iterator[None]:
    """Join the torchrun launch for a command's block; outside torchrun, nothing happens.

    Each process takes ``num_threads`` torch CPU threads (the config's ``train.num_threads``)
    or else its share of this machine's cores, rather than a full pool each.
    """
    from detection.core import distributed

    if not distributed.under_torchrun():
        yield
        return
    import torch

    from detection.core.devices import resolve_device

    torch.set_num_threads(distributed.threads_per_process(num_threads))
    with distributed.process_group(resolve_device(device)):
        yield


def _config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=Path, help="YAML run config (configs/*.yaml); the defaults are the paper's setting")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=2")
    parser.add_argument("--device", help="auto, cpu or cuda (default: the config's)")


def _add_train_multibox(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="SPEC", help="training set")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="writes DIR/multibox.pt (resumes a run left there)")
    _config_arguments(parser)


def _run_train_multibox(args: argparse.Namespace) -> int:
    from detection.config import load_config
    from detection.data.datasets import load_dataset
    from proposals.multibox_train import train_multibox

    config = load_config(args.config, args.set)
    path = train_multibox(config.multibox, load_dataset(args.data), args.out, args.device or config.device)
    print(f"MultiBox checkpoint: {path}")
    return 0


def _add_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, metavar="SPEC", help="training set")
    parser.add_argument("--proposals", required=True, type=Path, metavar="DIR", help="proposal store of the training set")
    parser.add_argument("--members", help="how many members (6) or which (0,2,5); default: the config's train.members")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="writes DIR/member{i}.pt (and box_regressor{i}.pt with box_regression.enabled); finished members are kept, interrupted ones resume")
    _config_arguments(parser)


def _run_train(args: argparse.Namespace) -> int:
    import dataclasses

    from classifiers.box_regression_train import fit_box_regressors
    from classifiers.ensemble import parse_members
    from classifiers.train import train_members
    from detection.config import load_config
    from detection.core import distributed
    from detection.data.datasets import load_dataset
    from proposals.store import ProposalStore

    config = load_config(args.config, args.set)
    members = parse_members(args.members) if args.members else None
    train = config.train
    if members and max(members) >= train.members:
        train = dataclasses.replace(train, members=max(members) + 1)
    dataset = load_dataset(args.data)
    proposals = ProposalStore.open(args.proposals, dataset).load_all()
    device = args.device or config.device
    with _torchrun_group(device, train.num_threads):
        paths = train_members(dataset, proposals, config.classifier, train, args.out, members, device, progress=distributed.is_main())
        if config.box_regression.enabled:
            chosen = members if members is not None else list(range(train.members))
            fit_box_regressors(dataset, proposals, config.box_regression, args.out, chosen, device, distributed.is_main(), train.num_threads)
        if distributed.is_main():
            print(f"members: {len(paths)} -> {args.out}")
    return 0


# ----------------------------------------------------------------------------- benchmarks


def _add_bench(parser: argparse.ArgumentParser) -> None:
    which = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    detection = which.add_parser("detection", help="propose -> train members -> detect -> evaluate, with a report")
    detection.add_argument("--data", metavar="SPEC", help="test set (replaces data.test)")
    detection.add_argument("--train-data", metavar="SPEC", help="training set (replaces data.train)")
    detection.add_argument("--out", type=Path, default=Path("runs/bench"), metavar="RUNDIR")
    detection.add_argument("--force", action="store_true", help="reuse a run directory made with another config, redoing the stages that changed")
    _config_arguments(detection)
    classification = which.add_parser("classification", help="top-1/top-5 error by crops (1, 10, 144) and members (Table 3)")
    classification.add_argument("--data", required=True, metavar="SPEC", help="imagefolder:ROOT, or a detection dataset (its objects are classified)")
    classification.add_argument("--checkpoints", required=True, type=Path, metavar="DIR", help="member*.pt files, e.g. RUNDIR/members")
    classification.add_argument("--members", default="all")
    classification.add_argument("--crops", type=int, nargs="+", default=[1, 10, 144], choices=[1, 10, 144])
    classification.add_argument("--max-items", type=int, default=300, help="classify at most this many objects/images (a seeded sample)")
    classification.add_argument("--device", default="auto")
    classification.add_argument("--out", type=Path, metavar="DIR", help="write classification.md and classification.json here")
    proposals = which.add_parser("proposals", help="recall of SS x1, SS x2, MultiBox and the merge on one dataset")
    proposals.add_argument("--data", metavar="SPEC", help="dataset to cover (replaces data.test)")
    proposals.add_argument("--train-data", metavar="SPEC", help="MultiBox training set (replaces data.train)")
    proposals.add_argument("--out", type=Path, default=Path("runs/proposals"), metavar="DIR")
    _config_arguments(proposals)


def _bench_config(args: argparse.Namespace):  # noqa: ANN202
    from detection.config import load_config

    overrides = list(args.set)
    if getattr(args, "data", None):
        overrides.append(f"data.test={args.data}")
    if getattr(args, "train_data", None):
        overrides.append(f"data.train={args.train_data}")
    return load_config(args.config, overrides)


def _run_bench(args: argparse.Namespace) -> int:
    from detection.core.atomic import write_json, write_text

    if args.bench == "detection":
        from detection.bench.detection import run_detection_benchmark

        config = _bench_config(args)
        run_detection_benchmark(config, args.out, force=args.force, device=args.device)
        print((args.out / "report.md").read_text())
        return 0
    if args.bench == "classification":
        from classifiers.ensemble import member_paths, parse_members
        from detection.bench.classification import run_classification_track
        from detection.data.datasets import load_dataset

        members = parse_members(args.members, list(member_paths(args.checkpoints)))
        report = run_classification_track(load_dataset(args.data), args.checkpoints, members, tuple(args.crops), args.max_items, device=args.device)
        print(report.table())
        if args.out:
            write_text(args.out / "classification.md", report.table() + "\n")
            write_json(args.out / "classification.json", report.to_json())
        return 0
    from detection.bench.proposals import run_proposal_study

    run_proposal_study(_bench_config(args), args.out, device=args.device)
    print((args.out / "recall.md").read_text())
    return 0


# ----------------------------------------------------------------------------- simulate


def _add_simulate(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", default="synthetic:60:1", metavar="SPEC", help="dataset to run on (default synthetic:60:1)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("runs/simulated"), metavar="DIR")


def _run_simulate(args: argparse.Namespace) -> int:
    from detection.simulate import run_simulation

    return run_simulation(args.data, args.out, seed=args.seed)


# ----------------------------------------------------------------------------- entry point

COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int], str]] = {
    "data": (_add_data, _run_data, "summarise a dataset spec; export it as VOC or COCO"),
    "propose": (_add_propose, _run_propose, "compute region proposals (Selective Search, MultiBox, merged) into a resumable store"),
    "train-multibox": (_add_train_multibox, _run_train_multibox, "train the MultiBox proposal network"),
    "recall": (_add_recall, _run_recall, "proposal recall (coverage) of one or more stores, with plots"),
    "train": (_add_train, _run_train, "fine-tune region classifier members (R-CNN windows) on stored proposals"),
    "detect": (_add_detect, _run_detect, "score proposals with an ensemble of region classifiers; per-class NMS; write detections"),
    "evaluate": (_add_evaluate, _run_evaluate, "mean average precision of a detections file (ILSVRC, VOC07, VOC12, COCO@IoU)"),
    "analyze": (_add_analyze, _run_analyze, "error analysis of a detections file: false-positive and miss types, oracle AP per fix, AP by size"),
    "show": (_add_show, _run_show, "draw ground truth, proposals and detections on images as PNG"),
    "bench": (_add_bench, _run_bench, "benchmarks: detection (end to end), classification (Table 3), proposals (recall study)"),
    "simulate": (_add_simulate, _run_simulate, "score detections simulated from the ground truth under every protocol"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rcnn", description="R-CNN-style detection after the GoogLeNet ILSVRC-2014 entry.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (add_arguments, _, help_text) in COMMANDS.items():
        add_arguments(subparsers.add_parser(name, help=help_text, description=help_text))
    return parser


def _configure_logging(args: argparse.Namespace) -> None:
    """Log to stderr; under torchrun, lines carry the rank and ranks other than 0 keep quiet."""
    level = logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO
    prefix = ""
    # Only torchrun sets LOCAL_RANK; checking it first spares other commands importing torch.
    if "LOCAL_RANK" in os.environ:
        from detection.core.distributed import launch

        place = launch()
        if place is not None:
            prefix = f"[rank {place.rank}/{place.world_size}] "
            if place.rank != 0 and not args.verbose:
                level = max(level, logging.WARNING)
    logging.basicConfig(level=level, format=f"{prefix}%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _configure_logging(args)
    try:
        return COMMANDS[args.command][1](args)
    except DataError as error:
        print(f"rcnn {args.command}: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, FileNotFoundError) as error:
        # Configuration and argument faults: one line, no traceback from deep inside a library.
        if args.verbose:
            raise
        print(f"rcnn {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
