"""Which candidate runs an export takes: the Pareto front, one run, or the best under a budget."""

from __future__ import annotations

from mlflow.exceptions import MlflowException

from orchestrator.export.errors import ExportError
from orchestrator.tags import PARENT_RUN_TAG, PARETO_TAG, ROLE_CANDIDATE, ROLE_SEARCH, ROLE_TAG
from orchestrator.tracking import SearchTracker


def latest_search_run_id(tracker: SearchTracker) -> str:
    run_id = tracker.latest_search_run_id()
    if run_id is None:
        raise ExportError(f"experiment has no cmpnas search runs at {tracker.tracking_uri}; run `cmpnas search` first")
    return run_id


def get_run(tracker: SearchTracker, run_id: str):
    try:
        return tracker.client.get_run(run_id)
    except MlflowException as error:
        raise ExportError(f"run id {run_id!r} does not exist at {tracker.tracking_uri}; "
                          "see `cmpnas pareto --all` for the candidate run ids") from error


def select_runs(tracker: SearchTracker, search_run_id: str | None, run_id: str | None,
                max_mflops: float | None) -> tuple[object, list]:
    """(search run, candidate runs to export), all finished and with final metrics."""
    if run_id is not None:
        candidate = get_run(tracker, run_id)
        if candidate.data.tags.get(ROLE_TAG) != ROLE_CANDIDATE:
            raise ExportError(f"run {run_id} is not a cmpnas candidate run (tag {ROLE_TAG}={ROLE_CANDIDATE})")
        _require_finished(candidate)
        return get_run(tracker, candidate.data.tags[PARENT_RUN_TAG]), [candidate]
    search = get_run(tracker, search_run_id or latest_search_run_id(tracker))
    if search.data.tags.get(ROLE_TAG) != ROLE_SEARCH:
        raise ExportError(f"run {search.info.run_id} is not a cmpnas search run (tag {ROLE_TAG}={ROLE_SEARCH})")
    finished = [run for run in tracker.child_runs(search.info.run_id)
                if run.info.status == "FINISHED" and "final_mflops" in run.data.metrics]
    if max_mflops is not None:
        within = [run for run in finished if run.data.metrics["final_mflops"] <= max_mflops]
        if not within:
            cheapest = min((run.data.metrics["final_mflops"] for run in finished), default=float("nan"))
            raise ExportError(f"no finished candidate within --max-mflops {max_mflops} (cheapest: {cheapest:.2f})")
        return search, [max(within, key=lambda run: run.data.metrics["final_cross_map"])]
    front = [run for run in finished if run.data.tags.get(PARETO_TAG) == "true"]
    if not front:
        raise ExportError(f"search {search.info.run_id} has no candidates tagged {PARETO_TAG}=true")
    return search, sorted(front, key=lambda run: run.data.metrics["final_mflops"])


def _require_finished(run) -> None:
    if run.info.status != "FINISHED" or "final_mflops" not in run.data.metrics:
        raise ExportError(f"run {run.info.run_id} did not finish (status {run.info.status}); export finished runs")
