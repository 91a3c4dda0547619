"""``cmpnas sync``: send what a search journaled while its tracking server was unreachable.

Replaying is idempotent (see ``orchestrator.journal``): running it twice, or after the search
itself sent part of the journal, records nothing twice. When every trial of the search has
ended, sync also records the Pareto front the search could not record without the server.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from orchestrator.credentials import redact_uri
from orchestrator.journal import TrackingUnavailableError
from orchestrator.output_lock import locked_output_dir
from orchestrator.search_records import finalize_search, open_journal, open_tracker
from orchestrator.search_state import ResumeError, SearchState


def sync_search(output_dir: str | Path, tracking_uri: str | None, wait_s: float, console: Console) -> str:
    output_dir = Path(output_dir).resolve()
    if not output_dir.is_dir():
        raise ResumeError(f"output_dir={str(output_dir)!r} does not exist: give the output_dir of a search")
    with locked_output_dir(output_dir, "cmpnas sync"):
        return _sync_locked(output_dir, tracking_uri, wait_s, console)


def _sync_locked(output_dir: Path, tracking_uri: str | None, wait_s: float, console: Console) -> str:
    state = SearchState.load(output_dir)
    if state is None or state.parent_run_id is None:
        raise ResumeError(f"output_dir={str(output_dir)!r} holds no cmpnas search that reached MLflow "
                          f"({SearchState.path_in(output_dir)} is missing or has no parent run)")
    uri = tracking_uri or state.tracking_uri  # recorded without credentials: they come from the environment
    shown = redact_uri(uri)
    tracker = open_tracker(uri, state.experiment)
    journal = open_journal(tracker, state, output_dir)
    before = journal.pending
    if state.phase == "trials_done":
        finalize_search(journal, state, output_dir, console, outage_wait_s=wait_s,
                        metric=state.config.get("search", {}).get("metric", "cross_map"))
        return (f"sent {before} journaled writes to {shown}; every trial had ended: Pareto front recorded, "
                f"parent run {state.parent_run_id} FINISHED")
    if not journal.drain(wait_s):
        raise TrackingUnavailableError(f"the tracking server at {shown} is still unreachable after {wait_s:g}s; "
                                       f"{journal.pending} writes wait in {journal.path}")
    follow_up = {
        "finished": "the search had finished",
        "running": "the search is running or was killed: continue it with `cmpnas search --resume`",
        "interrupted": "the search was interrupted: continue it with `cmpnas search --resume`",
        "starting": "the search was killed while starting: continue it with `cmpnas search --resume`",
    }[state.phase]
    return f"sent {before} journaled writes to {shown} (nothing pending); {follow_up}"
