"""The result of a budget sweep: the best finished candidate within each FLOPs budget.

"Best" is the highest final cross-model mAP (fewer MFLOPs break ties) among fully trained
candidates whose fvcore MFLOPs are at most the budget, the rule ``cmpnas export --max-mflops``
applies, so exporting a budget takes the run recorded here. Every evaluated candidate counts for
every budget it fits. Budgets are named like the export's registry aliases, ``budget-<k>kflops``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from orchestrator.pareto_report import CandidateRow, ParetoReport
from orchestrator.journal import PARENT, TrackingJournal
from orchestrator.tags import BUDGET_TAG


@dataclass(frozen=True)
class BudgetPick:
    budget_mflops: float
    alias: str
    best: CandidateRow | None


def budget_alias(budget_mflops: float) -> str:
    from orchestrator.export.registry import alias_for

    return alias_for(budget_mflops, budget_mflops)


def best_per_budget(report: ParetoReport, budgets: Sequence[float]) -> list[BudgetPick]:
    picks = []
    for budget in sorted(budgets):
        # The search's own metric (search.metric) decides, as it does for the front.
        within = [row for row in report.candidates if row.mflops <= budget and not math.isnan(row.score)]
        best = max(within, key=lambda row: (row.score, -row.mflops), default=None)
        picks.append(BudgetPick(budget, budget_alias(budget), best))
    return picks


def write_budget_csv(picks: list[BudgetPick], path: Path) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["budget_mflops", "alias", "run_id", "arch_id", "mflops", "cross_map", "cross_r1"])
        for pick in picks:
            row = pick.best
            writer.writerow([pick.budget_mflops, pick.alias, row.run_id if row else "", row.arch_id if row else "",
                             f"{row.mflops:.4f}" if row else "", f"{row.cross_map:.2f}" if row else "",
                             f"{row.cross_r1:.2f}" if row else ""])
    return path


def record_budget_sweep(journal: TrackingJournal, picks: list[BudgetPick], output_dir: Path) -> Path:
    """Parent run: a tag and two metrics per budget and ``budget_sweep.csv``; each chosen child
    run: tag ``budget_best`` listing the budgets it wins. Written through the search's journal,
    so an outage of the tracking server loses none of it."""
    wins: dict[str, list[str]] = {}
    metrics: dict[str, float] = {}
    tags: dict[str, str] = {}
    for pick in picks:
        key = pick.alias.replace("-", "_")
        tags[pick.alias] = pick.best.run_id if pick.best else "none"
        if pick.best:
            metrics[f"{key}_cross_map"] = pick.best.cross_map
            metrics[f"{key}_mflops"] = pick.best.mflops
            wins.setdefault(pick.best.run_id, []).append(pick.alias)
    metrics["budgets_filled"] = float(sum(pick.best is not None for pick in picks))
    # Keyed: a resumed search that records the sweep again writes each record once.
    journal.set_tags(PARENT, tags, key="parent/budget-sweep/tags")
    journal.log_metrics(PARENT, metrics, key="parent/budget-sweep/metrics")
    for run_id, aliases in wins.items():
        # A run id is its own journal reference.
        journal.set_tags(run_id, {BUDGET_TAG: ",".join(aliases)}, key=f"{run_id}/budget-best")
    path = write_budget_csv(picks, output_dir / "budget_sweep.csv")
    journal.log_artifact(PARENT, path, key="parent/budget-sweep.csv")
    return path
