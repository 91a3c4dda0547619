"""The Pareto front of a search, read back from MLflow: its rows, the front, the compatibility summary.

MLflow is the source of truth, so ``cmpnas pareto`` on an old experiment and the end of a live
search produce the same front from the same records; how it is shown (table, markdown, CSV, plot)
is ``orchestrator.results.front_rendering``'s.

The compatibility check (``workers.trial_report.Scoring.verdict``: a candidate fails when its
final ``cross_<m>`` < ``evaluation.compatibility_ratio`` x its final ``homo_<m>``, ``<m>`` the
searched metric, or is below ``evaluation.paragon_ratio`` x the gallery model's or hardly above
chance) is shown, never applied: the front is selected as always, and every candidate
keeps its verdict beside it (``CandidateRow.compatibility``, the table's and ``pareto.csv``'s
column ``compatibility``). A row's verdict is its run's tag ``tags.COMPATIBILITY_TAG``; a run
recorded without it (a search older than the check) is judged again by the same rule from its
final metrics and the search's params and references (``recorded_scoring``).
When any candidate failed, the table is followed by ``compatibility_summary``: how many, how many on
the front, the likely causes and the settings to change, so a front of failed candidates is never
shown without saying so.

"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from evaluators import pareto_front
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.tags import COMPATIBILITY_TAG, PARETO_TAG, ROLE_CANDIDATE, ROLE_TAG, SUPERSEDED_TAG
from workers.trial_report import (
    COMPATIBILITY_FAILED,
    COMPATIBILITY_FAILURE_CAUSES,
    COMPATIBILITY_PASSED,
    DEFAULT_SCORING,
    Scoring,
)

# The accuracy objective is the search's own metric (``search.metric``).
OBJECTIVES = (("score", "max"), ("mflops", "min"))
# The parent run's param holding search.metric (config_params names it so).
SEARCH_METRIC_PARAM = "search.metric"
# The parent run's param holding evaluation.compatibility_ratio (config_params names it so).
COMPATIBILITY_RATIO_PARAM = "evaluation.compatibility_ratio"
PARAGON_RATIO_PARAM = "evaluation.paragon_ratio"
CHANCE_MARGIN_PARAM = "evaluation.chance_margin"
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
    score: float = math.nan  # the searched metric (ParetoReport.scoring.metric)
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
    latency_ms: float = math.nan  # measured as the candidates' (evaluators.latency); nan: not measured


@dataclass(frozen=True)
class ParetoReport:
    candidates: list[CandidateRow]
    paragon: ParagonRow | None
    scoring: Scoring = DEFAULT_SCORING

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


def collect_report(tracker: SearchTracker, parent_run_id: str, scoring: Scoring | None = None) -> ParetoReport:
    """Finished child runs with final metrics, marked on the front by (max ``scoring.metric``, min
    FLOPs), each with its compatibility verdict (see the module's rules). ``scoring`` defaults to the
    search's own, read from its parent run (``recorded_scoring``)."""
    parent_run = tracker.client.get_run(parent_run_id)
    scoring = scoring or recorded_scoring(parent_run)
    metric, homogeneous = scoring.metric, scoring.homogeneous
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
                compatibility=recorded_compatibility(run, scoring),
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
                             parent.get(f"paragon_{scoring.measure}", math.nan),
                             parent.get("paragon_heldout_r1", math.nan),
                             parent.get(f"paragon_heldout_{scoring.measure}", math.nan),
                             parent.get("paragon_latency_ms", math.nan))
    return ParetoReport(sorted(rows, key=lambda row: row.mflops), paragon, scoring)


def recorded_scoring(parent_run) -> Scoring:
    """How a recorded search scored: its ``search.metric`` and ``evaluation.*`` ratio params and its
    references (metrics ``paragon_<m>``, ``chance_<m>``). A search recorded before a field existed
    scores as it did then: ``compatibility_ratio`` 0.5, no paragon or chance floor."""
    params, metrics = parent_run.data.params, parent_run.data.metrics
    margin = params.get(CHANCE_MARGIN_PARAM, "None")
    scoring = Scoring(params.get(SEARCH_METRIC_PARAM, DEFAULT_SCORING.metric),
                      float(params.get(COMPATIBILITY_RATIO_PARAM, DEFAULT_SCORING.compatibility_ratio)),
                      float(params.get(PARAGON_RATIO_PARAM, 0.0)), None if margin == "None" else float(margin))
    return scoring.with_references(metrics.get(f"paragon_{scoring.measure}"), metrics.get(f"chance_{scoring.measure}"))


def recorded_compatibility(run, scoring: Scoring) -> str | None:
    """A child run's verdict: its tag, else the rule applied to its final metrics (older runs)."""
    tagged = run.data.tags.get(COMPATIBILITY_TAG)
    if tagged in (COMPATIBILITY_PASSED, COMPATIBILITY_FAILED):
        return tagged
    final = {name.removeprefix("final_"): value for name, value in run.data.metrics.items()
             if name.startswith("final_")}
    return scoring.verdict(final)


def compatibility_summary(report: ParetoReport) -> str | None:
    """How many candidates failed the compatibility check (on the front too), the rule, the likely
    causes and the settings to change; None when none failed."""
    failed = report.compatibility_failures
    if not failed:
        return None
    rule = report.scoring.rule
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
