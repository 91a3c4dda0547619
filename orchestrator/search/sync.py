"""``cmpnas sync``: send what a search journaled while its tracking server was unreachable.

Replaying is idempotent (see ``orchestrator.tracking.journal``): running it twice, or after the search
itself sent part of the journal, records nothing twice. What follows depends on the search's
phase (``PHASE_STEPS``, one entry per phase): when every trial has ended (``trials_done``) sync
also records the Pareto front the search could not record without the server, and moves the
search on as the search itself would (to ``final_training`` when ``search.final_training`` is
set, which `cmpnas search --resume` then runs); in every other phase it says what to run next.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from orchestrator.common.credentials import redact_uri
from orchestrator.common.output_lock import locked_output_dir
from orchestrator.search.phases import SearchPhase, phase_after_front
from orchestrator.search.records import FrontPlan, record_front
from orchestrator.search.state import ResumeError, SearchState
from orchestrator.tracking.errors import TrackingUnavailableError
from orchestrator.tracking.journal import TrackingJournal
from orchestrator.tracking.session import open_journal, open_tracker

RESUME = "continue it with `cmpnas search --resume`"


@dataclass(frozen=True)
class SyncSession:
    """One ``cmpnas sync``: the search's state, its journal (sent), and how long to wait for the server."""

    state: SearchState
    journal: TrackingJournal
    output_dir: Path
    wait_s: float


def sync_search(output_dir: str | Path, tracking_uri: str | None, wait_s: float) -> str:
    """Send the journal of the search in ``output_dir`` and take its phase's step; returns what was done."""
    output_dir = Path(output_dir).resolve()
    if not output_dir.is_dir():
        raise ResumeError(f"output_dir={str(output_dir)!r} does not exist: give the output_dir of a search")
    with locked_output_dir(output_dir, "cmpnas sync"):
        state = SearchState.load(output_dir)
        if state is None or state.parent_run_id is None:
            raise ResumeError(f"output_dir={str(output_dir)!r} holds no cmpnas search that reached MLflow "
                              f"({SearchState.path_in(output_dir)} is missing or has no parent run)")
        uri = tracking_uri or state.tracking_uri  # recorded without credentials: they come from the environment
        journal = open_journal(open_tracker(uri, state.experiment), state.parent_run_id, output_dir)
        before = journal.pending
        if not journal.drain(wait_s):
            raise TrackingUnavailableError(f"the tracking server at {redact_uri(uri)} is still unreachable after "
                                           f"{wait_s:g}s; {journal.pending} writes wait in {journal.path}")
        done = PHASE_STEPS[state.phase](SyncSession(state, journal, output_dir, wait_s))
        return f"sent {before} journaled writes to {redact_uri(uri)} (nothing pending); {done}"


def _record_front(session: SyncSession) -> str:
    """Every trial had ended: the front the search could not record, and the phase the search would move to."""
    recorded_epochs = session.state.config.get("search", {}).get("final_training", {}).get("epochs", 0)
    next_phase = phase_after_front(recorded_epochs)
    record_front(session.journal, session.state, session.output_dir, FrontPlan(session.wait_s, next_phase=next_phase))
    if next_phase is SearchPhase.FINAL_TRAINING:
        return (f"every trial had ended: Pareto front recorded; its final training (search.final_training) has not "
                f"run: {RESUME}")
    return f"every trial had ended: Pareto front recorded, parent run {session.state.parent_run_id} FINISHED"


def _say(what: str, session: SyncSession) -> str:
    return what


# What sync does after sending the journal, by the search's phase.
PHASE_STEPS: dict[SearchPhase, Callable[[SyncSession], str]] = {
    SearchPhase.STARTING: partial(_say, f"the search was killed while starting: {RESUME}"),
    SearchPhase.RUNNING: partial(_say, f"the search is running or was killed: {RESUME}"),
    SearchPhase.INTERRUPTED: partial(_say, f"the search was interrupted: {RESUME}"),
    SearchPhase.TRIALS_DONE: _record_front,
    SearchPhase.FINAL_TRAINING: partial(_say, f"the front is recorded and its final training did not finish: {RESUME}"),
    SearchPhase.FINISHED: partial(_say, "the search had finished"),
}
