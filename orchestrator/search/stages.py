"""The stages of one session of a search once its parent run is open (``SearchContext``).

In order (``record_search``): the parent run's records (``orchestrator.search.parent_run``); the
candidates as Tune trials (``orchestrator.search.trials``), proposed by the configured strategy and
tracked by the MLflow and convergence callbacks; the phase moved to ``trials_done`` when every
trial ended, else ``interrupted``; the Pareto front recorded (``orchestrator.search.records``);
for a budget sweep the best candidate per budget (``orchestrator.results.budget``); why the search
ended short, if it did (``orchestrator.search.shortfall``); and, with ``search.final_training``,
the front trained again (``orchestrator.search.final_training``) before the search is finished.
A session resumed in phase ``final_training`` goes straight to that last stage.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ray import tune

from orchestrator.results.budget import best_per_budget, record_budget_sweep
from orchestrator.results.final_training import render_final_training
from orchestrator.results.front import ParetoReport, collect_report
from orchestrator.search.context import SearchContext
from orchestrator.search.final_training import run_final_training
from orchestrator.search.parent_run import record_parent_run
from orchestrator.search.phases import SearchPhase, phase_after_front
from orchestrator.search.records import FrontPlan, record_front
from orchestrator.search.shortfall import Shortfall, find_shortfall, record_shortfall
from orchestrator.search.trials import SEARCH_MODE, run_trials, tune_trial_id
from orchestrator.strategies import ProposalCost, SearchRequest, WithinBudget, create_searcher
from orchestrator.strategies.latency_gate import WithinLatency, proposal_constraint
from orchestrator.tracking.convergence import SearchConvergenceCallback
from orchestrator.tracking.journal import PARENT

if TYPE_CHECKING:
    from orchestrator.config.schema import SearchConfig


@dataclass(frozen=True)
class SessionResult:
    """How a session ended: the parent run's status, the front, and why the search fell short (None: it did not)."""

    status: str
    report: ParetoReport
    shortfall: Shortfall | None = None


def record_search(ctx: SearchContext) -> SessionResult:
    """Everything recorded under the parent run (the module's stages)."""
    record_parent_run(ctx)
    if ctx.state.phase == SearchPhase.FINAL_TRAINING:  # resumed after its front was recorded
        ctx.journal.log_metrics(PARENT, {"search_sessions": ctx.state.sessions},
                                key=f"parent/sessions/{ctx.state.sessions}")
        report = collect_report(ctx.journal.tracker, ctx.state.parent_run_id, ctx.scoring)
        finish_with_final_training(ctx, report)
        return SessionResult("FINISHED", report)
    results = run_candidates(ctx)
    complete = all_ended(results)
    next_phase = phase_after_front(ctx.config.search.final_training.epochs if complete else 0)
    final_training = next_phase is SearchPhase.FINAL_TRAINING
    report = record_front(ctx.journal, ctx.state, ctx.output_dir,
                          FrontPlan(ctx.config.tracking.outage_wait_s, ctx.scoring, next_phase))
    if final_training:
        ctx.reload_state()
    if ctx.config.search.budgets_mflops:
        record_budgets(ctx, report)
    shortfall = find_shortfall(ctx.config.search, complete=complete, trials_started=len(results),
                               trials_failed=results.num_errors, candidates_finished=len(report.candidates),
                               compatibility_failed=len(report.compatibility_failures))
    if complete:  # an interrupted search is resumed, and judged when its trials have all ended
        record_shortfall(ctx.journal, ctx.config.search, shortfall)
    if final_training:
        finish_with_final_training(ctx, report)
    return SessionResult("FINISHED" if complete else "KILLED", report, shortfall)


def run_candidates(ctx: SearchContext) -> tune.ResultGrid:
    """The candidates as Tune trials, then the phase they leave the search in (saved)."""
    config, started = ctx.config, time.perf_counter()
    cost, predictions = ProposalCost(ctx.inputs.space), {}
    limit = config.search.proposal_limit_mflops
    searcher = create_searcher(SearchRequest(
        ctx.inputs.space, config.search, ctx.scoring.metric, cost, SEARCH_MODE,
        constraint=proposal_constraint(WithinBudget(cost, limit) if limit is not None else None,
                                       latency_gate(config.search)), predictions=predictions,
        name=f"cmpnas-search-{ctx.state.parent_run_id[:8]}"))
    convergence = SearchConvergenceCallback(ctx.journal.tracker, ctx.journal.parent_run_id, ctx.paragon.cost.mflops,
                                            ctx.journal, ctx.scoring, predictions)
    results = run_trials(ctx, searcher, extra_callbacks=[convergence])
    complete = all_ended(results)
    summary = {"stage_trials_seconds": time.perf_counter() - started, "trials_started": len(results),
               "trials_failed": results.num_errors}
    if ctx.state.sessions == 1:  # a restored experiment runs Tune's copy of the searcher, not this one
        summary["strategy_results_observed"] = searcher.observed
        summary["trials_stopped_early"] = convergence.stopped_early
    ctx.state.trial_ids = sorted(tune_trial_id(result) for result in results)
    if complete:
        ctx.journal.log_metrics(PARENT, {**summary, "search_sessions": ctx.state.sessions}, key="parent/summary")
    ctx.move_to(SearchPhase.TRIALS_DONE if complete else SearchPhase.INTERRUPTED)
    return results


def latency_gate(search: SearchConfig) -> WithinLatency | None:
    """``search.max_latency_ms`` as a proposal constraint (``orchestrator.strategies.latency_gate``)."""
    return WithinLatency(search.max_latency_ms) if search.max_latency_ms is not None else None


def all_ended(results: tune.ResultGrid) -> bool:
    """Whether every trial ended (finished, stopped early or failed): else the search was interrupted."""
    return results.num_terminated + results.num_errors == len(results)


def record_budgets(ctx: SearchContext, report: ParetoReport) -> None:
    """A budget sweep's best candidate per budget, recorded and logged."""
    picks = best_per_budget(report, ctx.config.search.budgets_mflops)
    record_budget_sweep(ctx.journal, picks, ctx.output_dir)
    for pick in picks:
        ctx.console.log(f"budget {pick.budget_mflops:g} MFLOPs ({pick.alias}): "
                        + (f"{pick.best.arch_id}, {pick.best.mflops:.3f} MFLOPs, cross-model mAP "
                           f"{pick.best.cross_map:.2f}" if pick.best else "no finished candidate within it"))


def finish_with_final_training(ctx: SearchContext, report: ParetoReport) -> None:
    """search.final_training after the recorded front, then the search is finished."""
    rows = run_final_training(ctx, report)
    render_final_training(rows, report, ctx.console)
    ctx.journal.set_status(PARENT, "FINISHED", key=f"parent/finished/{ctx.state.sessions}")
    ctx.journal.flush()
    ctx.move_to(SearchPhase.FINISHED)
