"""The Pareto front of a search as people read it: the terminal table, the markdown of the parent
run's description, ``pareto.csv`` and ``pareto.png``.

Rules:
* every view shows the paragon's row first, then the front (or every candidate), each with its
  compatibility verdict; a search metric other than R@1 and mAP gets a column of its own;
* with a validation split the held-out columns follow, with ``HELD_OUT_NOTE`` saying what was
  selected on what;
* ``cmpnas pareto`` adds each candidate's run id (its first ``SHORT_RUN_ID`` characters, which
  ``cmpnas export --candidate-run-id`` accepts as a unique prefix);
* the markdown (``front_markdown``) is the parent run's description in MLflow (``DESCRIPTION_TAG``),
  cut to the rows that fit MLflow's tag length (the rest are counted; ``pareto.csv`` holds them all).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from evaluators import FLOPS_CONVENTION
from evaluators.latency import LATENCY_METHOD
from orchestrator.results.front import (
    MAX_DESCRIPTION_LENGTH,
    SHORT_RUN_ID,
    CandidateRow,
    ParetoReport,
    compatibility_summary,
)
from workers.trial_report import COMPATIBILITY_FAILED


def write_csv(report: ParetoReport, path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run_id", "arch_id", "mflops", "params", "cost_reduction", "cross_r1", "cross_map",
                         "homo_r1", "latency_ms", "pareto", "gap_r1_to_paragon", "searched_metric", "searched_value",
                         "searched_homo_value", "compatibility_ratio", "compatibility", "heldout_cross_r1",
                         "heldout_searched_value", "heldout_gap_r1_to_paragon", "latency_reduction"])
        for row in report.candidates:
            writer.writerow([row.run_id, row.arch_id, f"{row.mflops:.4f}", row.params, f"{row.cost_reduction:.2f}",
                             f"{row.cross_r1:.2f}", f"{row.cross_map:.2f}", f"{row.homo_r1:.2f}",
                             f"{row.latency_ms:.3f}", row.pareto, f"{_gap(report, row):.2f}", report.scoring.metric,
                             f"{row.score:.2f}", f"{row.homo_score:.2f}", f"{report.scoring.compatibility_ratio:g}",
                             row.compatibility or "", f"{row.heldout_cross_r1:.2f}", f"{row.heldout_score:.2f}",
                             f"{_held_out_gap(report, row):.2f}", f"{_latency_reduction(report, row):.2f}"])
    return path


def write_plot(report: ParetoReport, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    others = [row for row in report.candidates if not row.pareto]
    axes.scatter([r.mflops for r in others], [r.score for r in others], c="0.6", label="candidates")
    front = report.front
    axes.plot([r.mflops for r in front], [r.score for r in front], "o-", c="tab:red", label="Pareto front")
    failed = report.compatibility_failures
    if failed:
        axes.scatter([r.mflops for r in failed], [r.score for r in failed], marker="x", s=80, c="black",
                     label="failed compatibility check")
    if report.paragon:
        axes.scatter([report.paragon.mflops], [report.paragon.score], marker="*", s=200, c="tab:blue",
                     label="paragon (gallery/gallery)")
    axes.set_xscale("log")
    axes.set_xlabel("query model MFLOPs (fvcore, 1 multiply-add = 1 flop)")
    axes.set_ylabel(f"{report.scoring.metric} (%)")
    axes.grid(True, alpha=0.3)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
    return path


def render_table(report: ParetoReport, console: Console, only_front: bool = True, run_ids: bool = False) -> None:
    """The front (or every candidate); ``run_ids``: a last column with each candidate's MLflow run id,
    its first ``SHORT_RUN_ID`` characters (a unique prefix, which ``cmpnas export --candidate-run-id``
    takes as the full id; ``pareto.csv`` holds the full ids). ``cmpnas pareto`` shows it."""
    table = Table(title=f"Pareto front (max {report.scoring.metric}, min FLOPs)" if only_front else "All candidates")
    for column in _columns(report):
        table.add_column(column, justify="right" if column != "arch" else "left", no_wrap=column == "arch")
    if run_ids:  # never wrapped or cut: it is copied into `cmpnas export --candidate-run-id`
        table.add_column("run id", justify="left", no_wrap=True, min_width=SHORT_RUN_ID)
    ids = lambda run_id: (run_id[:SHORT_RUN_ID],) if run_ids else ()  # noqa: E731
    if report.paragon:
        table.add_row("paragon", *_paragon_cells(report), *ids(""), style="bold blue")
    for row in report.front if only_front else report.candidates:
        table.add_row(row.arch_id, *_candidate_cells(report, row, _compatibility_cell(row.compatibility)),
                      *ids(row.run_id), style="bold" if row.pareto else None)
    console.print(table)
    if report.held_out:
        console.print(HELD_OUT_NOTE, highlight=False)
    console.print(_conventions(report), highlight=False)
    summary = compatibility_summary(report)
    if summary is not None:
        console.print(f"[bold red]compatibility check:[/] {escape(summary)}", highlight=False)


def front_markdown(report: ParetoReport, complete: bool = True) -> str:
    """The front as ``render_table`` prints it, in markdown, for the parent run's description: at
    most ``MAX_DESCRIPTION_LENGTH`` characters (rows that do not fit are counted, not cut)."""
    header = _columns(report)
    front = report.front
    state = "" if complete else " so far (the search was interrupted; `cmpnas search --resume` continues it)"
    # The table comes first: the UI shows a description's first lines until "Show more".
    lines = [f"**Pareto front{state}** (max {report.scoring.metric}, min FLOPs): {len(front)} of "
             f"{len(report.candidates)} finished candidates; `pareto.csv` lists them all, `pareto.png` plots them.", "",
             _markdown_row(header), "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    rows = []
    if report.paragon:
        rows.append(_markdown_row(("**paragon**", *_paragon_cells(report))))
    for row in front:
        verdict = "**FAILED**" if row.compatibility == COMPATIBILITY_FAILED else row.compatibility or "-"
        rows.append(_markdown_row((row.arch_id, *_candidate_cells(report, row, verdict))))
    footer = ["", *((HELD_OUT_NOTE, "") if report.held_out else ()), _conventions(report)]
    summary = compatibility_summary(report)
    if summary is not None:
        footer += ["", f"**Compatibility check:** {summary}"]
    room = MAX_DESCRIPTION_LENGTH - len("\n".join(lines + footer)) - 200  # 200: the line saying what was left out
    kept = 0
    for row in rows:
        if len(row) + 1 > room:
            break
        room -= len(row) + 1
        kept += 1
    lines += rows[:kept]
    if kept < len(rows):
        lines.append(f"| ... {len(rows) - kept} more rows in `pareto.csv` |" + " |" * (len(header) - 1))
    return "\n".join(lines + footer)[:MAX_DESCRIPTION_LENGTH]


def _columns(report: ParetoReport) -> tuple[str, ...]:
    """The columns of both renderings; a searched metric other than R@1 and mAP (e.g.
    cross_tar_far_1e-2) gets its own."""
    return ("arch", "MFLOPs", "params", "cost x", "cross R@1", "cross mAP", *_searched_metric(report),
            "homo R@1", "gap R@1", "latency ms", "latency x", "compatibility", *_held_out_header(report))


def _searched_metric(report: ParetoReport, value: float | None = None) -> tuple[str, ...]:
    """The extra column of ``_columns`` (its header, or with ``value`` its cell); none for R@1 and mAP."""
    if report.scoring.metric in ("cross_r1", "cross_map"):
        return ()
    return (report.scoring.metric,) if value is None else (f"{value:.2f}",)


def _paragon_cells(report: ParetoReport) -> tuple[str, ...]:
    p = report.paragon
    return (f"{p.mflops:.2f}", f"{p.params:,}", "1.0", f"{p.r1:.2f}", f"{p.map:.2f}",
            *_searched_metric(report, p.score), f"{p.r1:.2f}", "0.00", _latency_cell(p.latency_ms),
            "1.0" if not math.isnan(p.latency_ms) else "", "", *_held_out_paragon_cells(report))


def _candidate_cells(report: ParetoReport, row: CandidateRow, verdict: str) -> tuple[str, ...]:
    return (f"{row.mflops:.2f}", f"{row.params:,}", f"{row.cost_reduction:.1f}", f"{row.cross_r1:.2f}",
            f"{row.cross_map:.2f}", *_searched_metric(report, row.score), f"{row.homo_r1:.2f}",
            f"{_gap(report, row):.2f}", f"{row.latency_ms:.2f}", f"{_latency_reduction(report, row):.1f}", verdict,
            *_held_out_cells(report, row))


def _latency_cell(latency_ms: float) -> str:
    return "" if math.isnan(latency_ms) else f"{latency_ms:.2f}"


def _latency_reduction(report: ParetoReport, row: CandidateRow) -> float:
    """Paragon latency / candidate latency, both timed on their ONNX export (nan where either is not)."""
    paragon = report.paragon.latency_ms if report.paragon is not None else math.nan
    return paragon / row.latency_ms if row.latency_ms > 0 else math.nan


def _conventions(report: ParetoReport) -> str:
    return (f"FLOPs: {FLOPS_CONVENTION}. latency: {LATENCY_METHOD}; latency x = paragon latency / candidate "
            f"latency. gap R@1 = paragon R@1 - cross-model R@1, in points. compatibility: "
            f"failed when {report.scoring.rule} (evaluation.compatibility_ratio, paragon_ratio, chance_margin).")


def _markdown_row(cells) -> str:
    return "| " + " | ".join(str(cell).replace("|", "\\|") for cell in cells) + " |"


def _compatibility_cell(verdict: str | None) -> str:
    if verdict == COMPATIBILITY_FAILED:
        return "[bold red]FAILED[/]"
    return verdict or "-"


def _gap(report: ParetoReport, row: CandidateRow) -> float:
    return report.paragon.r1 - row.cross_r1 if report.paragon else math.nan


HELD_OUT_NOTE = ("Selected on the validation split (data.validation_size, carved from train): cross R@1, mAP, "
                 "gap and compatibility are measured there. held-out: the same candidates on the held-out query "
                 "and gallery splits, which nothing was selected on; held-out gap = paragon's held-out R@1 - "
                 "held-out cross-model R@1.")


# Two columns, so the table still fits a terminal; pareto.csv also holds the held-out searched metric.
def _held_out_header(report: ParetoReport) -> tuple[str, ...]:
    return ("held-out R@1", "held-out gap") if report.held_out else ()


def _held_out_cells(report: ParetoReport, row: CandidateRow) -> tuple[str, ...]:
    if not report.held_out:
        return ()
    return f"{row.heldout_cross_r1:.2f}", f"{_held_out_gap(report, row):.2f}"


def _held_out_paragon_cells(report: ParetoReport) -> tuple[str, ...]:
    if not report.held_out:
        return ()
    return f"{report.paragon.heldout_r1:.2f}", "0.00"


def _held_out_gap(report: ParetoReport, row: CandidateRow) -> float:
    return report.paragon.heldout_r1 - row.heldout_cross_r1 if report.paragon else math.nan
