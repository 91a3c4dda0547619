"""The errors of a tracking server a user can act on (light: the CLI imports them without MLflow)."""

from __future__ import annotations

from search_space.errors import CmpnasError


class TrackingUnavailableError(CmpnasError, RuntimeError):
    """The tracking server cannot be reached; what was recorded is kept in the journal."""

    exit_code = 3  # results are safe in the local journal, not yet in MLflow: retry later (`cmpnas sync`)


class JournalWriteError(CmpnasError, RuntimeError):
    """A line could not be appended to the tracking journal (a full disk, an I/O error): the search stops,
    with the journal cut back to its last complete line."""


class TrackingCredentialsError(CmpnasError, RuntimeError):
    """The tracking server refuses this process's credentials (or their absence)."""


class ExperimentNotFoundError(CmpnasError, LookupError):
    """A command that reads a search (``cmpnas pareto``) was pointed at an experiment that does not exist, or
    that holds no search."""
