"""Opening a job's MLflow tracker and its journal, with the errors a user can act on.

Rules of ``open_tracker``: any failure to open the experiment is classified; refused credentials
become ``TrackingCredentialsError`` and an unreachable server ``TrackingUnavailableError`` (each
saying that nothing was recorded, and the fix), everything else is raised as it is (a bug, or a
server answering something unexpected). Messages are redacted (``orchestrator.common.credentials``).
``open_journal`` gives the process's one journal of a search's ``output_dir``
(``TrackingJournal.open``).
"""

from __future__ import annotations

from pathlib import Path

from orchestrator.common.credentials import redact_uri, redacted_excerpt
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.errors import TrackingCredentialsError, TrackingUnavailableError
from orchestrator.tracking.journal import (
    CREDENTIALS_ADVICE,
    JOURNAL_FOLDER,
    TrackingJournal,
    is_credential_error,
    is_transient,
)


def open_tracker(tracking_uri: str, experiment: str) -> SearchTracker:
    try:
        return SearchTracker(tracking_uri, experiment)
    except Exception as error:  # classified: only an outage or refused credentials become user-facing errors
        cause = redacted_excerpt(str(error))
        if is_credential_error(error):
            raise TrackingCredentialsError(
                f"the tracking server at {redact_uri(tracking_uri)} refused this process ({cause}); nothing was "
                f"recorded. {CREDENTIALS_ADVICE[0].upper()}{CREDENTIALS_ADVICE[1:]}"
            ) from error
        if is_transient(error):
            raise TrackingUnavailableError(
                f"the tracking server at {redact_uri(tracking_uri)} cannot be reached ({cause}); nothing was "
                "recorded. Start it (or set tracking.uri) and run the command again"
            ) from error
        raise


def open_journal(tracker: SearchTracker, parent_run_id: str, output_dir: Path) -> TrackingJournal:
    return TrackingJournal.open(tracker, parent_run_id, output_dir / JOURNAL_FOLDER)
