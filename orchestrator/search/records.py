"""The last stage of a search: its Pareto front recorded in MLflow.

Used by the driver at the end of a search and by ``cmpnas sync`` for a search whose server was
unreachable at its end; neither needs the other. Rules of ``record_front``:
* everything journaled is sent first; if the server stays unreachable for ``outage_wait_s`` the
  records stay in the journal and ``TrackingUnavailableError`` says to run ``cmpnas sync``;
* child runs that no trial of the search will finish are tagged ``SUPERSEDED_TAG`` and left out,
  so runs and trials correspond one to one;
* the front is selected from the finished child runs in MLflow (``orchestrator.results.front``),
  tagged, and written as ``pareto.csv`` and ``pareto.png``; its table (markdown) becomes the parent
  run's description (``DESCRIPTION_TAG``, written again at each end, so it shows the latest front);
  the parent run ends FINISHED when every trial ended, else KILLED (to be resumed);
* only a search whose trials all ended (phase ``trials_done``) moves on, to ``FrontPlan.next_phase``;
* the compatibility check is summed up on the parent run of a search whose trials all ended:
  metrics ``compatibility_passed``, ``compatibility_failed`` and ``compatibility_failed_on_front``
  and, when any candidate failed, the tag ``COMPATIBILITY_FAILURES_TAG`` with how many, the rule,
  the likely causes and the settings to change (``results.front.compatibility_summary``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console

from orchestrator.common.credentials import redact_uri, redacted_excerpt
from orchestrator.results.front import ParetoReport, collect_report, compatibility_summary, tag_front
from orchestrator.results.front_rendering import front_markdown, write_csv, write_plot
from orchestrator.search.phases import SearchPhase
from orchestrator.search.state import SearchState
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.errors import TrackingUnavailableError
from orchestrator.tracking.journal import PARENT, TrackingJournal, is_transient
from orchestrator.tracking.tags import (
    COMPATIBILITY_FAILURES_TAG,
    DESCRIPTION_TAG,
    ROLE_FINAL_TRAINING,
    ROLE_TAG,
    TRIAL_ID_TAG,
)
from workers.trial_report import Scoring


@dataclass(frozen=True)
class FrontPlan:
    """How a front is recorded: how long to wait for an unreachable server
    (``tracking.outage_wait_s``), how candidates are scored (None: as the parent run's params say),
    and the phase a complete search moves to (``final_training`` when ``search.final_training``
    follows: the parent run then stays RUNNING until it has)."""

    outage_wait_s: float
    scoring: Scoring | None = None
    next_phase: SearchPhase = SearchPhase.FINISHED


def record_front(journal: TrackingJournal, state: SearchState, output_dir: Path, plan: FrontPlan) -> ParetoReport:
    """Send what is journaled, then select and record the Pareto front from MLflow (see the module's rules)."""
    complete = state.phase == SearchPhase.TRIALS_DONE

    def unavailable(error: BaseException | None = None) -> TrackingUnavailableError:
        cause = f" ({redacted_excerpt(str(error))})" if error else ""
        return TrackingUnavailableError(
            f"the tracking server at {redact_uri(journal.tracker.tracking_uri)} is unreachable{cause}; "
            f"every result is kept: {journal.pending} writes in {journal.path}. When the server is back run "
            f"`cmpnas sync --output-dir {output_dir}`" + ("" if complete else " or `cmpnas search --resume`")
        )

    if not journal.drain(plan.outage_wait_s):
        raise unavailable()
    try:
        report = _record(journal, state, output_dir, plan)
    except Exception as error:
        if is_transient(error):
            raise unavailable(error) from error
        raise
    if not journal.drain(plan.outage_wait_s):
        raise unavailable()
    if complete:
        state.moved_to(plan.next_phase).save(output_dir)
    return report


def _record(journal: TrackingJournal, state: SearchState, output_dir: Path, plan: FrontPlan) -> ParetoReport:
    tracker, complete = journal.tracker, state.phase == SearchPhase.TRIALS_DONE
    started = time.perf_counter()
    supersede_orphan_runs(tracker, state)
    report = collect_report(tracker, state.parent_run_id, plan.scoring)
    tag_front(tracker, report)
    journal.set_tags(PARENT, {DESCRIPTION_TAG: front_markdown(report, complete)})
    for path in (write_csv(report, output_dir / "pareto.csv"), write_plot(report, output_dir / "pareto.png")):
        journal.log_artifact(PARENT, path)
    if complete:
        journal.log_metrics(PARENT, {
            "stage_pareto_seconds": time.perf_counter() - started,
            "candidates_finished": len(report.candidates), "pareto_size": len(report.front),
            **report.compatibility_counts(),
        }, key="parent/pareto")
        failures = compatibility_summary(report)
        if failures is not None:
            journal.set_tags(PARENT, {COMPATIBILITY_FAILURES_TAG: failures[:5000]}, key="parent/compatibility-failures")
    if plan.next_phase == SearchPhase.FINISHED or not complete:
        journal.set_status(PARENT, "FINISHED" if complete else "KILLED")
    return report


def report_unsent_writes(journal: TrackingJournal, output_dir: Path, console: Console) -> bool:
    """After the front, say so when writes are still waiting in the journal (the server went away
    after ``record_front``): they are kept for ``cmpnas sync``. True when some wait."""
    if journal.flush(wait=True):
        return False
    console.print(f"[bold yellow]{journal.pending} tracking writes wait in {journal.path}; send them with "
                  f"`cmpnas sync --output-dir {output_dir}`[/]")
    return True


def supersede_orphan_runs(tracker: SearchTracker, state: SearchState) -> None:
    """A driver killed after a trial's child run was created but before Tune recorded the trial
    leaves a run that no trial will finish: mark it, so runs and trials correspond one to one."""
    if not state.trial_ids:
        return
    known = set(state.trial_ids)
    for run in tracker.child_runs(state.parent_run_id):
        if run.data.tags.get(ROLE_TAG) == ROLE_FINAL_TRAINING:  # not search trials (orchestrator.search.final_training)
            continue
        if run.data.tags.get(TRIAL_ID_TAG) not in known:
            tracker.supersede(run)
