"""The Pareto front of a search, read back from MLflow: table, CSV, plot and tags.

MLflow is the source of truth, so ``cmpnas pareto`` on an old experiment and the end of a live
search produce the same front from the same records.

The compatibility check (``workers.trial_report.compatibility_verdict``: a candidate fails when its
final ``cross_<m>`` < ``evaluation.compatibility_ratio`` x its final ``homo_<m>``, ``<m>`` the
searched metric) is shown, never applied: the front is selected as always, and every candidate
keeps its verdict beside it (``CandidateRow.compatibility``, the table's and ``pareto.csv``'s
column ``compatibility``). A row's verdict is its run's tag ``tags.COMPATIBILITY_TAG``; a run
recorded without it (a search older than the check) is judged again by the same rule from its
final metrics and the search's ratio (its parameter ``evaluation.compatibility_ratio``, else 0.5).
When any candidate failed, the table is followed by ``compatibility_summary``: how many, how many on
the front, the likely causes and the settings to change, so a front of failed candidates is never
shown without saying so.

``cmpnas pareto`` adds each candidate's run id (its first ``SHORT_RUN_ID`` characters, which
``cmpnas export --candidate-run-id`` accepts as a unique prefix). The same table, in markdown (``front_markdown``), is the parent run's description in MLflow
(``DESCRIPTION_TAG``), cut to the rows that fit MLflow's tag length (the rest are counted, and
``pareto.csv`` holds them all).
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from evaluators import FLOPS_CONVENTION, pareto_front
from orchestrator.tags import COMPATIBILITY_TAG, PARETO_TAG, ROLE_CANDIDATE, ROLE_TAG, SUPERSEDED_TAG
from orchestrator.tracking import SearchTracker
from workers.trial_report import (
    COMPATIBILITY_FAILED,
    COMPATIBILITY_FAILURE_CAUSES,
    COMPATIBILITY_PASSED,
    DEFAULT_COMPATIBILITY_RATIO,
    compatibility_verdict,
    homogeneous_metric,
)

# The accuracy objective is the search's own metric (``search.metric``, cross_map by default).
OBJECTIVES = (("score", "max"), ("mflops", "min"))
DEFAULT_METRIC = "cross_map"
# The parent run's param holding search.metric (config_params names it so).
SEARCH_METRIC_PARAM = "search.metric"
# The parent run's param holding evaluation.compatibility_ratio (config_params names it so).
COMPATIBILITY_RATIO_PARAM = "evaluation.compatibility_ratio"
# Failed candidates named in a summary; the rest are counted.
MAX_NAMED_FAILURES = 10
# Characters of a run id the table shows (MLflow's are 32 hex digits): a prefix that
# `cmpnas export --candidate-run-id` resolves, refusing one that is not unique.
SHORT_RUN_ID = 12
# MLflow cuts a tag value (the run description too) longer than this.
MAX_DESCRIPTION_LENGTH = 8000


@dataclass(frozen=True)
class CandidateRow:
    run_id: str
    arch_id: str
    mflops: float
    params: int
    cost_reduction: float
    cross_r1: float
    cross_map: float
    homo_r1: float
    latency_ms: float
    score: float = math.nan  # the searched metric (ParetoReport.metric)
    pareto: bool = False
    homo_score: float = math.nan  # the searched metric's homogeneous counterpart (homo_<m>)
    compatibility: str | None = None  # "passed", "failed", or None: nothing to judge
    # With a validation split (data.validation_size): the held-out splits, reported beside, never ranked on.
    heldout_cross_r1: float = math.nan
    heldout_score: float = math.nan


@dataclass(frozen=True)
class ParagonRow:
    mflops: float
    params: int
    r1: float
    map: float
    score: float = math.nan
    heldout_r1: float = math.nan
    heldout_score: float = math.nan


@dataclass(frozen=True)
class ParetoReport:
    candidates: list[CandidateRow]
    paragon: ParagonRow | None
    metric: str = DEFAULT_METRIC
    compatibility_ratio: float = DEFAULT_COMPATIBILITY_RATIO

    @property
    def held_out(self) -> bool:
        """Whether the search had a validation split, so the rows carry held-out metrics too."""
        return any(not math.isnan(row.heldout_cross_r1) for row in self.candidates)

    @property
    def front(self) -> list[CandidateRow]:
        return sorted((row for row in self.candidates if row.pareto), key=lambda row: row.mflops)

    @property
    def compatibility_failures(self) -> list[CandidateRow]:
        """The candidates that failed the compatibility check, front or not."""
        return [row for row in self.candidates if row.compatibility == COMPATIBILITY_FAILED]

    def compatibility_counts(self) -> dict[str, int]:
        """The parent run's summary of the check: candidates that passed, failed, and failed on the front."""
        failed = self.compatibility_failures
        return {"compatibility_passed": sum(row.compatibility == COMPATIBILITY_PASSED for row in self.candidates),
                "compatibility_failed": len(failed),
                "compatibility_failed_on_front": sum(row.pareto for row in failed)}


def collect_report(tracker: SearchTracker, parent_run_id: str, metric: str | None = None,
                   compatibility_ratio: float | None = None) -> ParetoReport:
    """Finished child runs with final metrics, marked on the front by (max ``metric``, min FLOPs),
    each with its compatibility verdict (see the module's rules).

    ``metric`` defaults to the search's own (its ``search.metric`` parameter; cross_map for
    searches recorded before that field existed), ``compatibility_ratio`` likewise to its
    ``evaluation.compatibility_ratio`` (0.5 before that field existed).
    """
    parent_run = tracker.client.get_run(parent_run_id)
    metric = metric or searched_metric(parent_run)
    if compatibility_ratio is None:
        compatibility_ratio = float(parent_run.data.params.get(COMPATIBILITY_RATIO_PARAM, DEFAULT_COMPATIBILITY_RATIO))
    homogeneous = homogeneous_metric(metric)
    rows = []
    for run in tracker.child_runs(parent_run_id):
        metrics = run.data.metrics
        if run.info.status != "FINISHED" or "final_mflops" not in metrics or run.data.tags.get(SUPERSEDED_TAG) == "true":
            continue
        if run.data.tags.get(ROLE_TAG, ROLE_CANDIDATE) != ROLE_CANDIDATE:  # final training: reported apart
            continue
        rows.append(
            CandidateRow(
                run_id=run.info.run_id,
                arch_id=run.data.params.get("arch_id", "?"),
                mflops=metrics["final_mflops"],
                params=int(metrics.get("final_params", 0)),
                cost_reduction=metrics.get("final_cost_reduction", math.nan),
                cross_r1=metrics.get("final_cross_r1", math.nan),
                cross_map=metrics.get("final_cross_map", math.nan),
                homo_r1=metrics.get("final_homo_r1", math.nan),
                latency_ms=metrics.get("final_latency_ms", math.nan),
                score=metrics.get(f"final_{metric}", math.nan),
                homo_score=metrics.get(f"final_{homogeneous}", math.nan),
                compatibility=recorded_compatibility(run, metric, compatibility_ratio),
                heldout_cross_r1=metrics.get("final_heldout_cross_r1", math.nan),
                heldout_score=metrics.get(f"final_heldout_{metric}", math.nan),
            )
        )
    front = set(pareto_front([[getattr(row, name) for name, _ in OBJECTIVES] for row in rows], [s for _, s in OBJECTIVES]))
    rows = [CandidateRow(**{**asdict(row), "pareto": index in front}) for index, row in enumerate(rows)]
    parent = parent_run.data.metrics
    paragon = None
    if "paragon_mflops" in parent:
        paragon = ParagonRow(parent["paragon_mflops"], int(parent.get("paragon_params", 0)),
                             parent.get("paragon_r1", math.nan), parent.get("paragon_map", math.nan),
                             parent.get("paragon_" + metric.removeprefix("cross_"), math.nan),
                             parent.get("paragon_heldout_r1", math.nan),
                             parent.get("paragon_heldout_" + metric.removeprefix("cross_"), math.nan))
    return ParetoReport(sorted(rows, key=lambda row: row.mflops), paragon, metric, compatibility_ratio)


def searched_metric(parent_run) -> str:
    """The metric a search ranked by: its ``search.metric`` param, else (older searches) cross_map."""
    return parent_run.data.params.get(SEARCH_METRIC_PARAM, DEFAULT_METRIC)


def recorded_compatibility(run, metric: str, ratio: float) -> str | None:
    """A child run's verdict: its tag, else the rule applied to its final metrics (older runs)."""
    tagged = run.data.tags.get(COMPATIBILITY_TAG)
    if tagged in (COMPATIBILITY_PASSED, COMPATIBILITY_FAILED):
        return tagged
    final = {name.removeprefix("final_"): value for name, value in run.data.metrics.items()
             if name.startswith("final_")}
    return compatibility_verdict(final, metric, ratio)


def compatibility_summary(report: ParetoReport) -> str | None:
    """How many candidates failed the compatibility check (on the front too), the rule, the likely
    causes and the settings to change; None when none failed."""
    failed = report.compatibility_failures
    if not failed:
        return None
    rule = f"{report.metric} < {report.compatibility_ratio:g} x {homogeneous_metric(report.metric)}"
    front, failed_on_front = report.front, [row for row in failed if row.pareto]
    if front and len(failed_on_front) == len(front):
        on_front = f"; every candidate of the Pareto front ({len(front)}) is among them"
    else:
        on_front = f"; {len(failed_on_front)} of the {len(front)} on the Pareto front"
    named = ", ".join(row.arch_id for row in failed[:MAX_NAMED_FAILURES])
    more = f" and {len(failed) - MAX_NAMED_FAILURES} more" if len(failed) > MAX_NAMED_FAILURES else ""
    return (f"{len(failed)} of {len(report.candidates)} finished candidates failed the compatibility check "
            f"({rule}){on_front} ({named}{more}). Likely causes: {COMPATIBILITY_FAILURE_CAUSES}")


def tag_front(tracker: SearchTracker, report: ParetoReport) -> None:
    for row in report.candidates:
        tracker.set_tag(row.run_id, PARETO_TAG, "true" if row.pareto else "false")


def write_csv(report: ParetoReport, path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["run_id", "arch_id", "mflops", "params", "cost_reduction", "cross_r1", "cross_map",
                         "homo_r1", "latency_ms", "pareto", "gap_r1_to_paragon", "searched_metric", "searched_value",
                         "searched_homo_value", "compatibility_ratio", "compatibility", "heldout_cross_r1",
                         "heldout_searched_value", "heldout_gap_r1_to_paragon"])
        for row in report.candidates:
            writer.writerow([row.run_id, row.arch_id, f"{row.mflops:.4f}", row.params, f"{row.cost_reduction:.2f}",
                             f"{row.cross_r1:.2f}", f"{row.cross_map:.2f}", f"{row.homo_r1:.2f}",
                             f"{row.latency_ms:.3f}", row.pareto, f"{_gap(report, row):.2f}", report.metric,
                             f"{row.score:.2f}", f"{row.homo_score:.2f}", f"{report.compatibility_ratio:g}",
                             row.compatibility or "", f"{row.heldout_cross_r1:.2f}", f"{row.heldout_score:.2f}",
                             f"{_held_out_gap(report, row):.2f}"])
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
    axes.set_ylabel(f"{report.metric} (%)")
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
    table = Table(title=f"Pareto front (max {report.metric}, min FLOPs)" if only_front else "All candidates")
    # A searched metric other than R@1 and mAP (e.g. cross_tar_far_1e-2) gets its own column.
    extra = report.metric not in ("cross_r1", "cross_map")
    columns = ("arch", "MFLOPs", "params", "cost x", "cross R@1", "cross mAP", *((report.metric,) if extra else ()),
               "homo R@1", "gap R@1", "latency ms", "compatibility", *_held_out_header(report))
    for column in columns:
        table.add_column(column, justify="right" if column != "arch" else "left", no_wrap=column == "arch")
    if run_ids:  # never wrapped or cut: it is copied into `cmpnas export --candidate-run-id`
        table.add_column("run id", justify="left", no_wrap=True, min_width=SHORT_RUN_ID)
    ids = lambda run_id: (run_id[:SHORT_RUN_ID],) if run_ids else ()  # noqa: E731
    if report.paragon:
        p = report.paragon
        table.add_row("paragon", f"{p.mflops:.2f}", f"{p.params:,}", "1.0", f"{p.r1:.2f}", f"{p.map:.2f}",
                      *((f"{p.score:.2f}",) if extra else ()), f"{p.r1:.2f}", "0.00", "", "",
                      *_held_out_paragon_cells(report), *ids(""), style="bold blue")
    for row in report.front if only_front else report.candidates:
        table.add_row(row.arch_id, f"{row.mflops:.2f}", f"{row.params:,}", f"{row.cost_reduction:.1f}",
                      f"{row.cross_r1:.2f}", f"{row.cross_map:.2f}", *((f"{row.score:.2f}",) if extra else ()),
                      f"{row.homo_r1:.2f}", f"{_gap(report, row):.2f}", f"{row.latency_ms:.2f}",
                      _compatibility_cell(row.compatibility), *_held_out_cells(report, row), *ids(row.run_id),
                      style="bold" if row.pareto else None)
    console.print(table)
    if report.held_out:
        console.print(HELD_OUT_NOTE, highlight=False)
    console.print(f"FLOPs: {FLOPS_CONVENTION}. gap R@1 = paragon R@1 - cross-model R@1, in points. "
                  f"compatibility: failed when {report.metric} < {report.compatibility_ratio:g} x "
                  f"{homogeneous_metric(report.metric)} (evaluation.compatibility_ratio).", highlight=False)
    summary = compatibility_summary(report)
    if summary is not None:
        console.print(f"[bold red]compatibility check:[/] {escape(summary)}", highlight=False)


def front_markdown(report: ParetoReport, complete: bool = True) -> str:
    """The front as ``render_table`` prints it, in markdown, for the parent run's description: at
    most ``MAX_DESCRIPTION_LENGTH`` characters (rows that do not fit are counted, not cut)."""
    extra = report.metric not in ("cross_r1", "cross_map")
    header = ("arch", "MFLOPs", "params", "cost x", "cross R@1", "cross mAP", *((report.metric,) if extra else ()),
              "homo R@1", "gap R@1", "latency ms", "compatibility", *_held_out_header(report))
    front = report.front
    state = "" if complete else " so far (the search was interrupted; `cmpnas search --resume` continues it)"
    # The table comes first: the UI shows a description's first lines until "Show more".
    lines = [f"**Pareto front{state}** (max {report.metric}, min FLOPs): {len(front)} of {len(report.candidates)} "
             "finished candidates; `pareto.csv` lists them all, `pareto.png` plots them.", "",
             _markdown_row(header), "|" + "|".join([":---"] + ["---:"] * (len(header) - 1)) + "|"]
    rows = []
    if report.paragon:
        p = report.paragon
        rows.append(_markdown_row(("**paragon**", f"{p.mflops:.2f}", f"{p.params:,}", "1.0", f"{p.r1:.2f}",
                                   f"{p.map:.2f}", *((f"{p.score:.2f}",) if extra else ()), f"{p.r1:.2f}", "0.00",
                                   "", "", *_held_out_paragon_cells(report))))
    for row in front:
        verdict = "**FAILED**" if row.compatibility == COMPATIBILITY_FAILED else row.compatibility or "-"
        rows.append(_markdown_row((row.arch_id, f"{row.mflops:.2f}", f"{row.params:,}", f"{row.cost_reduction:.1f}",
                                   f"{row.cross_r1:.2f}", f"{row.cross_map:.2f}",
                                   *((f"{row.score:.2f}",) if extra else ()), f"{row.homo_r1:.2f}",
                                   f"{_gap(report, row):.2f}", f"{row.latency_ms:.2f}", verdict,
                                   *_held_out_cells(report, row))))
    footer = ["", *((HELD_OUT_NOTE, "") if report.held_out else ()), f"FLOPs: {FLOPS_CONVENTION}. gap R@1 = paragon R@1 - cross-model R@1, in points. compatibility: "
                  f"failed when {report.metric} < {report.compatibility_ratio:g} x "
                  f"{homogeneous_metric(report.metric)} (evaluation.compatibility_ratio)."]
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
