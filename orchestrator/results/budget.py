"""The result of a budget sweep: the best finished candidate within each FLOPs budget.

One rule (``best_within_budget``), used by the sweep and by ``cmpnas export --max-mflops`` alike,
so exporting a budget takes the run recorded here: "best" is the highest final value of the
search's own metric (``search.metric``, read from the parent run's param of that name by
``results.front.recorded_scoring``; ``cross_map`` for searches recorded before it existed), fewer
MFLOPs breaking ties, among fully trained candidates (not superseded) whose fvcore MFLOPs are at
most the budget and that report the metric. Every evaluated candidate counts for every budget it
fits. Budgets are named like the export's registry aliases, ``budget-<k>kflops``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

from orchestrator.results.front import CandidateRow, ParetoReport
from orchestrator.tracking.journal import PARENT, TrackingJournal
from orchestrator.tracking.tags import BUDGET_TAG


@dataclass(frozen=True)
class BudgetPick:
    budget_mflops: float
    alias: str
    best: CandidateRow | None


def registry_alias(mflops: float, budget: float | None = None) -> str:
    """The registry alias of an export: ``budget-<k>kflops`` for the best candidate within a budget,
    ``pareto-<k>kflops`` for a front candidate of ``mflops`` (aliases allow letters, digits, '-'
    and '_': budgets and FLOPs are written in kFLOPs, rounded up)."""
    if budget is not None:
        return f"budget-{math.ceil(budget * 1000)}kflops"
    return f"pareto-{math.ceil(mflops * 1000)}kflops"


Candidate = TypeVar("Candidate")


def best_within_budget(candidates: Iterable[Candidate], budget: float, mflops: Callable[[Candidate], float],
                       score: Callable[[Candidate], float | None]) -> Candidate | None:
    """The module's rule: the highest ``score`` (the searched metric's final value) within ``budget``
    MFLOPs, fewer MFLOPs breaking ties; candidates without a score are left out. None: none fits."""
    within = [(value, -mflops(candidate), index, candidate) for index, candidate in enumerate(candidates)
              if mflops(candidate) <= budget and (value := score(candidate)) is not None and not math.isnan(value)]
    # The index keeps the first of exact ties and spares comparing the candidates themselves.
    return max(within, key=lambda entry: (entry[0], entry[1], -entry[2]), default=(None,) * 4)[3]


def best_per_budget(report: ParetoReport, budgets: Sequence[float]) -> list[BudgetPick]:
    return [BudgetPick(budget, registry_alias(budget, budget),
                       best_within_budget(report.candidates, budget, lambda row: row.mflops, lambda row: row.score))
            for budget in sorted(budgets)]


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
