"""Markdown tables and the false-positive-type figure of an :class:`~eval.analysis.ErrorAnalysis`.

``format_summary`` is the oracle table alone (what ``rcnn bench detection`` puts in its report);
``format_analysis`` is the whole ``analysis.md``; ``plot_fp_types`` draws Hoiem-style stacked bars
of the top-ranked detections' types, one panel per class after a panel of all classes pooled.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from eval.analysis import FP_KINDS, MISS_KINDS, NEAR_IOU, ORACLES, RANKED_KINDS, SIZE_RANGES, TOP_MULTIPLES, ErrorAnalysis

__all__ = ["format_summary", "format_analysis", "plot_fp_types", "MAX_CLASS_PANELS"]

#: With more classes than this the figure shows only the pooled panel.
MAX_CLASS_PANELS = 8
_COLOURS = {"correct": "#4c9a2a", "localisation": "#f2b134", "confusion": "#3b75af", "background": "#c0392b"}


def _row(cells: list[object]) -> str:
    return "| " + " | ".join(str(cell) for cell in cells) + " |"


def _table(header: list[str], rows: list[list[object]]) -> list[str]:
    return [_row(header), "|" + "---|" * len(header)] + [_row(row) for row in rows]


def _fraction(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def format_summary(analysis: ErrorAnalysis) -> str:
    """Per class: #gt, AP, the AP gained by each oracle fix, recall and the proposal ceiling; then the mean."""
    header = ["class", "#gt", "AP"] + [f"+{fix}" for fix in ORACLES] + ["recall", "coverage"]
    rows = []
    for c in analysis.classes:
        gains = [f"{gain:+.4f}" for gain in c.oracle_gain.values()]
        rows.append([c.name, c.num_gt, f"{c.ap:.4f}", *gains, f"{c.recall:.4f}", _fraction(c.coverage)])
    oracle = analysis.oracle_map()
    ceilings = [c.coverage for c in analysis.classes]
    mean_ceiling = None if not analysis.with_proposals else float(np.mean(ceilings)) if ceilings else 0.0
    mean_recall = float(np.mean([c.recall for c in analysis.classes])) if analysis.classes else 0.0
    rows.append(
        ["**mean**", sum(c.num_gt for c in analysis.classes), f"{analysis.map:.4f}"]
        + [f"{oracle[fix] - analysis.map:+.4f}" for fix in ORACLES]
        + [f"{mean_recall:.4f}", _fraction(mean_ceiling)]
    )
    return "\n".join(_table(header, rows))


def _false_positive_table(analysis: ErrorAnalysis) -> list[str]:
    rows = []
    for c in analysis.classes:
        errors = sum(c.false_positives.values())
        shares = [f"{n} ({n / errors:.0%})" if errors else "0" for n in c.false_positives.values()]
        rows.append([c.name, c.num_det, c.num_det - errors, errors, *shares])
    return _table(["class", "#det", "correct", "false positives", *FP_KINDS], rows)


def _missed_table(analysis: ErrorAnalysis) -> list[str]:
    rows = []
    for c in analysis.classes:
        missed = sum(n or 0 for n in c.missed.values())
        rows.append([c.name, c.num_gt, missed, *("-" if c.missed[kind] is None else c.missed[kind] for kind in MISS_KINDS)])
    return _table(["class", "#gt", "missed", *MISS_KINDS], rows)


def _size_table(analysis: ErrorAnalysis) -> list[str]:
    rows = [[c.name, *(f"{_fraction(c.ap_by_size[s])} ({c.num_gt_by_size[s]})" for s in SIZE_RANGES)] for c in analysis.classes]
    rows.append(["**mean**", *(_fraction(v) for v in analysis.map_by_size().values())])
    return _table(["class", *(f"{size} AP (#gt)" for size in SIZE_RANGES)], rows)


def _top_ranked_table(analysis: ErrorAnalysis) -> list[str]:
    rows = []
    for multiple, counts in zip(TOP_MULTIPLES, analysis.pooled_top_ranked()):
        total = counts["detections"]
        rows.append([f"{multiple:g}", total, *(f"{counts[k] / total:.0%}" if total else "-" for k in RANKED_KINDS)])
    return _table(["top N / #gt", "detections", *RANKED_KINDS], rows)


def _definitions(analysis: ErrorAnalysis) -> list[str]:
    """The categories in a few lines; the exact rules are in :mod:`eval.analysis`."""
    t = "ILSVRC's per-box threshold" if analysis.protocol == "ilsvrc" else f"IoU {analysis.iou:g}"
    sizes = ", ".join(f"{name} [{low:g}, {high:g})" for name, (low, high) in SIZE_RANGES.items())
    return [
        f"- t = the protocol's match threshold ({t}); overlaps count every ground-truth box of the image.",
        (
            f"- False positives: **duplicate** reaches t on a box of its class already taken; **mislocalised** overlaps a box of its class "
            f"by >= {NEAR_IOU:g}; **confusion** overlaps a box of another class by >= {NEAR_IOU:g}; **background** otherwise (first rule that applies)."
        ),
        (
            f"- Missed objects: **not_covered** no proposal reaches t on it; **mislocalised** its best detection of its class has IoU in "
            f"[{NEAR_IOU:g}, t); **low_score** otherwise (covered, but no detection of its class localises it)."
        ),
        (
            "- Oracles: **+localisation** turns each localisation error into a true positive when its best box of its class is still unfound "
            "(best score first) and removes the others (duplicates); **+confusion** / **+background** remove those false positives. "
            "**coverage** (the fraction of positives a proposal reaches t on) is the ceiling on recall that the proposals set."
        ),
        f"- Sizes (COCO's areas, px^2 of box w*h): {sizes}; the protocol's matching is kept, boxes and unmatched detections of other sizes are ignored.",
    ]


def format_analysis(analysis: ErrorAnalysis, figure: str | None = "fp_types.png") -> str:
    """The whole Markdown report; ``figure`` is the PNG to link (None: no link)."""
    source = "with proposals" if analysis.with_proposals else "without proposals (missed objects not split by coverage)"
    lines = [
        f"# Error analysis: {analysis.dataset}",
        "",
        f"Protocol `{analysis.protocol}` at IoU {analysis.iou:g}, {source}; mAP {analysis.map:.4f}.",
        "",
        "## AP gained if one error type were fixed (oracle)",
        "",
        format_summary(analysis),
        "",
        "## False positives by type",
        "",
        *_false_positive_table(analysis),
        "",
        "## Missed objects",
        "",
        *_missed_table(analysis),
        "",
        "## AP by object size",
        "",
        *_size_table(analysis),
        "",
        "## Top-ranked detections by type (all classes pooled)",
        "",
        *_top_ranked_table(analysis),
    ]
    if figure:
        lines += ["", f"![false positive types]({figure})"]
    if analysis.classes_without_gt:
        lines += ["", f"({len(analysis.classes_without_gt)} classes without ground truth are left out.)"]
    return "\n".join(lines + ["", "## Definitions", "", *_definitions(analysis)]) + "\n"


def plot_fp_types(analysis: ErrorAnalysis, path: str | Path) -> Path:
    """Stacked bars of correct / localisation / confusion / background among the top ``m x #gt``
    detections, per class (when at most :data:`MAX_CLASS_PANELS`) after all classes pooled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("all classes", analysis.pooled_top_ranked())]
    if len(analysis.classes) <= MAX_CLASS_PANELS:
        panels += [(c.name, c.top_ranked) for c in analysis.classes]
    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    figure, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 2.8 * rows), squeeze=False, sharey=True)
    positions = np.arange(len(TOP_MULTIPLES))
    for axis, (title, counts) in zip(axes.ravel(), panels):
        totals = np.array([max(row["detections"], 1) for row in counts], dtype=float)
        bottom = np.zeros(len(TOP_MULTIPLES))
        for kind in RANKED_KINDS:
            share = np.array([row[kind] for row in counts]) / totals
            axis.bar(positions, share, bottom=bottom, color=_COLOURS[kind], label=kind, width=0.8)
            bottom += share
        axis.set(title=title, xticks=positions, xticklabels=[f"{m:g}" for m in TOP_MULTIPLES], ylim=(0, 1), xlabel="top N / #gt")
    for axis in axes.ravel()[len(panels) :]:
        axis.axis("off")
    for axis in axes[:, 0]:
        axis.set_ylabel("fraction of detections")
    figure.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=len(RANKED_KINDS), fontsize=8, frameon=False)
    figure.suptitle(f"Top-ranked detections by type ({analysis.protocol}, IoU {analysis.iou:g})", fontsize=10)
    figure.tight_layout(rect=(0, 0.08 / rows, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
