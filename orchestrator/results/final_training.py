"""The final training of a search's front, read back from MLflow: rows, table and CSV.

Imports neither Ray nor the trainable, so ``cmpnas pareto`` shows it cheaply. The rules of final
training itself are in ``orchestrator.search.final_training``; a row is a front candidate as searched
beside its finished final training (``tags.ROLE_FINAL_TRAINING``, not superseded), compared on
held-out R@1 when the search has a validation split, else on cross-model R@1.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from orchestrator.results.front import ParetoReport
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.tags import ROLE_FINAL_TRAINING, ROLE_TAG, SOURCE_RUN_TAG, SUPERSEDED_TAG

FINAL_TRAINING_FILE = "final_training.csv"


@dataclass(frozen=True)
class FinalTrainingRow:
    """A front candidate as searched and after final training: the reported metric of each."""

    source_run_id: str
    run_id: str
    arch_id: str
    mflops: float
    metric: str  # the metric compared: held-out R@1 with a validation split, else cross-model R@1
    searched: float
    final: float
    searched_score: float  # search.metric (validation with a validation split), as searched
    final_score: float


def final_training_runs(tracker: SearchTracker, parent_run_id: str) -> list:
    """The finished final-training runs of a search, the superseded ones left out."""
    return [run for run in tracker.child_runs(parent_run_id)
            if run.data.tags.get(ROLE_TAG) == ROLE_FINAL_TRAINING and run.info.status == "FINISHED"
            and run.data.tags.get(SUPERSEDED_TAG) != "true"]


def collect_final_training(tracker: SearchTracker, parent_run_id: str, report: ParetoReport) -> list[FinalTrainingRow]:
    """Each front candidate with a finished final training, as searched and after it (module rules)."""
    finals = {run.data.tags.get(SOURCE_RUN_TAG): run for run in final_training_runs(tracker, parent_run_id)}
    held_out = report.held_out
    key = "final_heldout_cross_r1" if held_out else "final_cross_r1"
    rows = []
    for candidate in report.front:
        run = finals.get(candidate.run_id)
        if run is None:
            continue
        metrics = run.data.metrics
        rows.append(FinalTrainingRow(
            source_run_id=candidate.run_id, run_id=run.info.run_id, arch_id=candidate.arch_id,
            mflops=candidate.mflops, metric="held-out R@1" if held_out else "cross R@1",
            searched=candidate.heldout_cross_r1 if held_out else candidate.cross_r1,
            final=metrics.get(key, math.nan), searched_score=candidate.score,
            final_score=metrics.get(f"final_{report.scoring.metric}", math.nan)))
    return rows


def write_final_training_csv(rows: list[FinalTrainingRow], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["source_run_id", "run_id", "arch_id", "mflops", "metric", "as_searched", "final_training",
                         "change", "searched_score", "final_score"])
        for row in rows:
            writer.writerow([row.source_run_id, row.run_id, row.arch_id, f"{row.mflops:.4f}", row.metric,
                             f"{row.searched:.2f}", f"{row.final:.2f}", f"{row.final - row.searched:+.2f}",
                             f"{row.searched_score:.2f}", f"{row.final_score:.2f}"])
    return path


def render_final_training(rows: list[FinalTrainingRow], report: ParetoReport, console: Console) -> None:
    """The front as searched beside after final training, with the gap to the paragon of each."""
    if not rows:
        return
    paragon = report.paragon
    reference = (paragon.heldout_r1 if report.held_out else paragon.r1) if paragon else math.nan
    metric = rows[0].metric
    table = Table(title=f"Final training of the front ({metric})")
    for column in ("run id", "arch", "MFLOPs", "as searched", "final training", "change", "gap to paragon"):
        table.add_column(column, justify="left" if column in ("run id", "arch") else "right",
                         no_wrap=column in ("run id", "arch"))
    for row in rows:
        # The final training's own run: `cmpnas export --candidate-run-id` exports that model.
        table.add_row(row.run_id[:12], row.arch_id, f"{row.mflops:.2f}", f"{row.searched:.2f}", f"{row.final:.2f}",
                      f"{row.final - row.searched:+.2f}", f"{reference - row.final:.2f}")
    console.print(table)
    console.print(f"paragon {metric} {reference:.2f}; final training: the same architecture from the same starting "
                  "weights, trained search.final_training.epochs epochs", highlight=False)
