"""A search's records in MLflow: its tracker and journal, and the last stage, the Pareto front.

Used by the driver at the end of a search and by ``cmpnas sync`` for a search whose server was
unreachable at its end; neither needs the other. Rules of ``finalize_search``:
* everything journaled is sent first; if the server stays unreachable for ``outage_wait_s`` the
  records stay in the journal and ``TrackingUnavailableError`` says to run ``cmpnas sync``;
* child runs that no trial of the search will finish are tagged ``SUPERSEDED_TAG`` and left out,
  so runs and trials correspond one to one;
* the front is selected from the finished child runs in MLflow (``orchestrator.pareto_report``),
  tagged, and written as ``pareto.csv`` and ``pareto.png``; its table (markdown) becomes the parent
  run's description (``DESCRIPTION_TAG``, written again at each end, so it shows the latest front);
  the parent run ends FINISHED when every trial ended, else KILLED (to be resumed);
* only a search whose trials all ended moves to phase ``finished``;
* the compatibility check is summed up on the parent run of a search whose trials all ended:
  metrics ``compatibility_passed``, ``compatibility_failed`` and ``compatibility_failed_on_front``
  and, when any candidate failed, the tag ``COMPATIBILITY_FAILURES_TAG`` with how many, the rule,
  the likely causes and the settings to change (``pareto_report.compatibility_summary``).
"""

from __future__ import annotations

import time
from pathlib import Path

from rich.console import Console

from orchestrator.credentials import redact_text, redact_uri
from orchestrator.journal import (
    JOURNAL_FOLDER,
    PARENT,
    TrackingJournal,
    CREDENTIALS_ADVICE,
    TrackingCredentialsError,
    TrackingUnavailableError,
    is_credential_error,
    is_transient,
)
from orchestrator.pareto_report import (
    ParetoReport,
    collect_report,
    compatibility_summary,
    front_markdown,
    tag_front,
    write_csv,
    write_plot,
)
from orchestrator.search_state import SearchState
from orchestrator.tags import (COMPATIBILITY_FAILURES_TAG, DESCRIPTION_TAG, ROLE_FINAL_TRAINING, ROLE_TAG, SUPERSEDED_TAG,
                              TRIAL_ID_TAG)
from orchestrator.tracking import SearchTracker


def open_tracker(tracking_uri: str, experiment: str) -> SearchTracker:
    try:
        return SearchTracker(tracking_uri, experiment)
    except Exception as error:  # classified: only an outage or refused credentials become user-facing errors
        if is_credential_error(error):
            raise TrackingCredentialsError(
                f"the tracking server at {redact_uri(tracking_uri)} refused this process "
                f"({redact_text(str(error).splitlines()[0][:300])}); nothing was recorded. {CREDENTIALS_ADVICE[0].upper()}"
                f"{CREDENTIALS_ADVICE[1:]}"
            ) from error
        if is_transient(error):
            raise TrackingUnavailableError(
                f"the tracking server at {redact_uri(tracking_uri)} cannot be reached "
                f"({redact_text(str(error).splitlines()[0][:300])}); "
                "nothing was recorded. Start it (or set tracking.uri) and run the command again"
            ) from error
        raise


def open_journal(tracker: SearchTracker, state: SearchState, output_dir: Path) -> TrackingJournal:
    return TrackingJournal.open(tracker, state.parent_run_id, output_dir / JOURNAL_FOLDER)


def finalize_search(journal: TrackingJournal, state: SearchState, output_dir: Path, console: Console, *,
                    outage_wait_s: float, metric: str = "cross_map",
                    compatibility_ratio: float | None = None, next_phase: str = "finished") -> ParetoReport:
    """Send what is journaled, then select and record the Pareto front from MLflow (see the module's rules).

    ``compatibility_ratio``: ``evaluation.compatibility_ratio``; None reads it from the parent run's params.
    ``next_phase``: the phase a complete search moves to once its front is recorded (``final_training``
    when search.final_training follows; the parent run then stays RUNNING until it has)."""
    tracker = journal.tracker
    complete = state.phase == "trials_done"

    def unavailable(error: BaseException | None = None) -> TrackingUnavailableError:
        cause = f" ({str(error).splitlines()[0][:300]})" if error else ""
        return TrackingUnavailableError(
            f"the tracking server at {redact_uri(tracker.tracking_uri)} is unreachable{redact_text(cause)}; every result is kept: "
            f"{journal.pending} writes in {journal.path}. When the server is back run "
            f"`cmpnas sync --output-dir {output_dir}`" + ("" if complete else " or `cmpnas search --resume`")
        )

    if not journal.drain(outage_wait_s):
        raise unavailable()
    try:
        started = time.perf_counter()
        supersede_orphan_runs(tracker, state)
        report = collect_report(tracker, state.parent_run_id, metric, compatibility_ratio)
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
                journal.set_tags(PARENT, {COMPATIBILITY_FAILURES_TAG: failures[:5000]},
                                 key="parent/compatibility-failures")
        if next_phase == "finished" or not complete:
            journal.set_status(PARENT, "FINISHED" if complete else "KILLED")
    except Exception as error:
        if is_transient(error):
            raise unavailable(error) from error
        raise
    if not journal.drain(outage_wait_s):
        raise unavailable()
    if complete:
        state = state.moved_to(next_phase)
        state.save(output_dir)
    return report


def report_unsent_writes(journal: TrackingJournal, output_dir: Path, console: Console) -> bool:
    """After the front, say so when writes are still waiting in the journal (the server went away
    after ``finalize_search``): they are kept for ``cmpnas sync``. True when some wait."""
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
        if run.data.tags.get(ROLE_TAG) == ROLE_FINAL_TRAINING:  # not search trials (orchestrator.final_training)
            continue
        if run.data.tags.get(TRIAL_ID_TAG) not in known:
            supersede_run(tracker, run)


def supersede_run(tracker: SearchTracker, run) -> None:
    """Mark a child run that nothing will finish ``SUPERSEDED_TAG`` (reports leave it out), and end it
    KILLED if it is still RUNNING; a run already marked is left as it is."""
    if run.data.tags.get(SUPERSEDED_TAG) == "true":
        return
    tracker.set_tag(run.info.run_id, SUPERSEDED_TAG, "true")
    if run.info.status == "RUNNING":
        tracker.end_run(run.info.run_id, "KILLED")
