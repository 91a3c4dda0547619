"""Which candidate runs an export takes: the Pareto front, one run, or the best under a budget.

The front and the best under a budget are chosen among the search's candidate runs (role
``candidate``), as the search chose. One run (``--candidate-run-id``) may also be a final training
of a front candidate (role ``final_training``, ``orchestrator.search.final_training``): the same
architecture trained longer, exported as it was recorded.
"""

from __future__ import annotations

from mlflow.exceptions import MlflowException

from orchestrator.common.credentials import redact_uri
from orchestrator.export.errors import ExportError
from orchestrator.results.budget import best_within_budget
from orchestrator.results.front import recorded_scoring
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.tags import (
    PARENT_RUN_TAG,
    PARETO_TAG,
    ROLE_CANDIDATE,
    ROLE_FINAL_TRAINING,
    ROLE_SEARCH,
    ROLE_TAG,
    SUPERSEDED_TAG,
)


def latest_search_run_id(tracker: SearchTracker) -> str:
    run_id = tracker.latest_search_run_id()
    if run_id is None:
        raise ExportError(f"experiment has no cmpnas search runs at {redact_uri(tracker.tracking_uri)}; run `cmpnas search` first")
    return run_id


def get_run(tracker: SearchTracker, run_id: str):
    try:
        return tracker.client.get_run(run_id)
    except MlflowException as error:
        raise ExportError(f"run id {run_id!r} does not exist at {redact_uri(tracker.tracking_uri)}; "
                          "see the run id column of `cmpnas pareto --all`") from error


# MLflow run ids are 32 lowercase hex digits; a shorter one is a prefix (the table of `cmpnas pareto`).
FULL_RUN_ID_LENGTH = 32
MIN_PREFIX_LENGTH = 6


def get_candidate_run(tracker: SearchTracker, run_id: str):
    """A candidate or final-training run by its full id or by a unique prefix of it (``cmpnas pareto``
    shows 12 characters)."""
    run_id = run_id.strip()
    if len(run_id) >= FULL_RUN_ID_LENGTH:
        return get_run(tracker, run_id)
    run_id = run_id.lower()
    if len(run_id) < MIN_PREFIX_LENGTH or any(char not in "0123456789abcdef" for char in run_id):
        raise ExportError(f"--candidate-run-id {run_id!r} is neither a run id (32 hex digits) nor a prefix of one of "
                          f"at least {MIN_PREFIX_LENGTH} hex digits; see the run id column of `cmpnas pareto --all`")
    matches = [run for role in (ROLE_CANDIDATE, ROLE_FINAL_TRAINING) for run in _runs_with_role(tracker, role)
               if run.info.run_id.startswith(run_id)]
    if not matches:
        raise ExportError(f"no candidate run id of the experiment starts with {run_id!r} at "
                          f"{redact_uri(tracker.tracking_uri)}; see the run id column of `cmpnas pareto --all`")
    if len(matches) > 1:
        raise ExportError(f"{len(matches)} candidate runs start with {run_id!r} "
                          f"({', '.join(sorted(run.info.run_id for run in matches))}): give more of the id")
    return matches[0]


def _runs_with_role(tracker: SearchTracker, role: str) -> list:
    runs, token = [], None
    while True:
        page = tracker.client.search_runs([tracker.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = '{role}'",
                                          max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def select_runs(tracker: SearchTracker, search_run_id: str | None, candidate_run_id: str | None,
                max_mflops: float | None) -> tuple[object, list]:
    """(search run, candidate runs to export), all finished and with final metrics.

    ``max_mflops``: the best candidate within the budget by the budget sweep's rule
    (``results.budget.best_within_budget``: the search's ``search.metric``, fewer MFLOPs breaking ties)."""
    if candidate_run_id is not None:
        candidate = get_candidate_run(tracker, candidate_run_id)
        candidate_run_id = candidate.info.run_id
        if candidate.data.tags.get(ROLE_TAG) not in (ROLE_CANDIDATE, ROLE_FINAL_TRAINING):
            raise ExportError(f"run {candidate_run_id} is not a cmpnas candidate run (tag {ROLE_TAG}={ROLE_CANDIDATE} "
                              f"or {ROLE_FINAL_TRAINING}); a search's parent run is --search-run-id")
        _require_finished(candidate)
        parent = candidate.data.tags[PARENT_RUN_TAG]
        if search_run_id is not None and search_run_id != parent:
            raise ExportError(f"candidate run {candidate_run_id} belongs to search {parent}, not to --search-run-id "
                              f"{search_run_id}")
        return get_run(tracker, parent), [candidate]
    search = get_run(tracker, search_run_id or latest_search_run_id(tracker))
    if search.data.tags.get(ROLE_TAG) != ROLE_SEARCH:
        raise ExportError(f"run {search.info.run_id} is not a cmpnas search run (tag {ROLE_TAG}={ROLE_SEARCH})")
    finished = [run for run in tracker.child_runs(search.info.run_id)
                if run.info.status == "FINISHED" and "final_mflops" in run.data.metrics
                and run.data.tags.get(ROLE_TAG) == ROLE_CANDIDATE]
    if max_mflops is not None:
        metric = recorded_scoring(search).metric
        current = [run for run in finished if run.data.tags.get(SUPERSEDED_TAG) != "true"]
        best = best_within_budget(current, max_mflops, lambda run: run.data.metrics["final_mflops"],
                                  lambda run: run.data.metrics.get(f"final_{metric}"))
        if best is None:
            cheapest = min((run.data.metrics["final_mflops"] for run in current), default=float("nan"))
            raise ExportError(f"no finished candidate with a final {metric} within --max-mflops {max_mflops} "
                              f"(cheapest: {cheapest:.2f})")
        return search, [best]
    front = [run for run in finished if run.data.tags.get(PARETO_TAG) == "true"]
    if not front:
        raise ExportError(f"search {search.info.run_id} has no candidates tagged {PARETO_TAG}=true")
    return search, sorted(front, key=lambda run: run.data.metrics["final_mflops"])


def _require_finished(run) -> None:
    if run.info.status != "FINISHED" or "final_mflops" not in run.data.metrics:
        raise ExportError(f"run {run.info.run_id} did not finish (status {run.info.status}); export finished runs")
