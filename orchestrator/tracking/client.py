"""The MLflow client of a search: experiment, parent run, and the values MLflow accepts.

Workers never talk to MLflow: the driver's Tune callbacks (``orchestrator.tracking.callbacks``,
``orchestrator.tracking.convergence``) turn trial results into child runs through the search's
``orchestrator.tracking.journal.TrackingJournal``, so tracking works the same for local and remote trials
and needs credentials on one host only. All calls go through ``MlflowClient`` with explicit run
ids, which is safe from Tune's callback thread and never depends on a process-global "active run".

How a search looks in MLflow's UI (docs/mlflow.md):
* every experiment cmpnas creates or opens is a model-training experiment (``EXPERIMENT_KIND_TAG``
  = ``EXPERIMENT_KIND_TRAINING``), set when it is created and added to an older one without it; an
  experiment someone gave another kind keeps it;
* the data splits are dataset inputs of the parent run (``orchestrator.tracking.dataset_inputs``), written
  through the journal and rebuilt into MLflow entities when sent. MLflow keeps one input per
  (name, digest) and run, so a replay adds nothing;
* a pickled tracker (Tune pickles callbacks into its experiment state, under ``ray.storage_path``)
  holds its tracking URI redacted (``orchestrator.common.credentials``); unpickled in a process
  that opened a tracker on the full URI, it takes that URI again (``_FULL_URIS``), else it works
  with credentials from the environment (``MLFLOW_TRACKING_USERNAME``, ...);
* MLflow 3.17's UI chooses the experiment page's layout by its "GenAI / Model training" switch (the
  link's ``workflowType`` query, else the browser's last choice, else GenAI), not by the experiment's
  kind: ``experiment_page_url`` and ``run_page_url`` are links that open on the runs.

Layering, one way: ``tags`` <- ``client`` <- ``journal`` <- the callbacks.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from orchestrator.common.credentials import redact_uri, redacted_excerpt
from orchestrator.config import flatten_fields
from orchestrator.tracking.dataset_inputs import dataset_input
from orchestrator.tracking.errors import ExperimentNotFoundError
from orchestrator.tracking.tags import (
    EXPERIMENT_KIND_TAG,
    EXPERIMENT_KIND_TRAINING,
    PARENT_RUN_TAG,
    ROLE_SEARCH,
    ROLE_TAG,
    SUPERSEDED_TAG,
)

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
# MLflow refuses a param value longer than this.
MAX_PARAM_LENGTH = 6000
# The query of a UI link that opens MLflow 3's model-training layout (runs table), whatever the
# browser chose last; without it a fresh browser opens the GenAI overview ("Traces: 0").
UI_TRAINING_LAYOUT = "workflowType=machine_learning"
# MLflow's client writes "View run ... at: <tracking URI>" to stdout when a run ends (a print, not a
# log record): with credentials in the URI that line would carry them, so it is turned off then.
SUPPRESS_URL_PRINTING = "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT"
# The full tracking URIs of the trackers this process opened, by their redacted form: an unpickled
# tracker finds its credentials here and never on disk.
_FULL_URIS: dict[str, str] = {}


def resolve_tracking_uri(configured: str | None) -> str:
    """An explicit ``tracking.uri`` first, then MLflow's ``MLFLOW_TRACKING_URI``, then local sqlite."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def param_value(value: Any) -> str:
    """A param as MLflow stores it: containers as sorted JSON, cut to MLflow's length limit."""
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else str(value)
    return text[:MAX_PARAM_LENGTH]


def config_params(tree: dict[str, Any]) -> dict[str, Any]:
    """A configuration as params named by dotted field; the loss weights stay one param, and so do the
    loss parameters."""
    return flatten_fields(tree, keep_whole=("loss_weights", "loss_parameters"))


def now_ms() -> int:
    return int(time.time() * 1000)


def experiment_page_url(ui_url: str, experiment_id: str) -> str:
    """The experiment's page in the MLflow UI at ``ui_url``, opened on its runs table."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}?{UI_TRAINING_LAYOUT}"


def run_page_url(ui_url: str, experiment_id: str, run_id: str) -> str:
    """A run's page in the MLflow UI at ``ui_url``, in the model-training layout."""
    return f"{ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}?{UI_TRAINING_LAYOUT}"


class SearchTracker:
    """The experiment of a search and the helpers to write its runs directly (unjournaled)."""

    def __init__(self, tracking_uri: str, experiment: str, create: bool = True):
        # No mlflow.set_tracking_uri: it would also set MLFLOW_TRACKING_URI for the whole process.
        self.tracking_uri = tracking_uri
        _FULL_URIS[redact_uri(tracking_uri)] = tracking_uri
        if redact_uri(tracking_uri) != tracking_uri:
            os.environ[SUPPRESS_URL_PRINTING] = "true"
        self.seconds_in_calls = 0.0
        self.client = _TimedClient(MlflowClient(tracking_uri=tracking_uri), self)
        existing = self.client.get_experiment_by_name(experiment)
        if existing is None and not create:
            raise ExperimentNotFoundError(f"no MLflow experiment named '{experiment}' at {redact_uri(tracking_uri)}; "
                                          "give the experiment of a search (--experiment, tracking.experiment)")
        if existing is None:
            self.experiment_id = self._create_experiment(experiment)
        else:
            self.experiment_id = existing.experiment_id
            if EXPERIMENT_KIND_TAG not in existing.tags:
                self._mark_training_experiment(experiment)

    def _create_experiment(self, experiment: str) -> str:
        """Create the experiment; when another search created it since it was looked up (two starting at
        once), use that one: creating is idempotent for the caller."""
        try:
            return self.client.create_experiment(experiment, tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND_TRAINING})
        except MlflowException as error:
            if error.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            created = self.client.get_experiment_by_name(experiment)
            if created is None:  # created and deleted again in between: nothing sensible to attach to
                raise
            return created.experiment_id

    def _mark_training_experiment(self, experiment: str) -> None:
        """An experiment created before cmpnas set its kind: a UI nicety, so a refusal (a read-only
        user running ``cmpnas pareto``) is only a warning."""
        try:
            self.client.set_experiment_tag(self.experiment_id, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_TRAINING)
        except MlflowException as error:
            logger.warning("could not mark MLflow experiment '%s' as a model-training experiment (%s); "
                           "open it in the UI with ?%s", experiment, redacted_excerpt(str(error), 200),
                           UI_TRAINING_LAYOUT)

    @classmethod
    def open_existing(cls, tracking_uri: str, experiment: str) -> SearchTracker:
        return cls(tracking_uri, experiment, create=False)

    # Tune pickles its callbacks with the experiment state: keep the address without its credentials,
    # rebuild the client (with this process's full URI where it has one).
    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": redact_uri(self.tracking_uri), "experiment_id": self.experiment_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.tracking_uri = _FULL_URIS.get(self.tracking_uri, self.tracking_uri)
        self.seconds_in_calls = 0.0
        self.client = _TimedClient(MlflowClient(tracking_uri=self.tracking_uri), self)

    def start_parent(self, run_name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={ROLE_TAG: ROLE_SEARCH, **tags})
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        batch = [Param(key, param_value(value)) for key, value in params.items()]
        for start in range(0, len(batch), 100):
            self.client.log_batch(run_id, params=batch[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        batch = [
            Metric(key, float(value), now_ms(), step)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def log_inputs(self, run_id: str, datasets: list[dict[str, str]]) -> None:
        """Dataset inputs given as ``dataset_inputs.data_split_inputs`` entries; one already on the run is kept once."""
        self.client.log_inputs(run_id, datasets=[dataset_input(fields) for fields in datasets])

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def supersede(self, run) -> None:
        """Mark a child run that nothing will finish ``SUPERSEDED_TAG`` (reports leave it out), and end
        it KILLED if it is still RUNNING; a run already marked is left as it is."""
        if run.data.tags.get(SUPERSEDED_TAG) == "true":
            return
        self.set_tag(run.info.run_id, SUPERSEDED_TAG, "true")
        if run.info.status == "RUNNING":
            self.end_run(run.info.run_id, "KILLED")

    def child_runs(self, parent_run_id: str) -> list:
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'", max_results=10000
        )

    def latest_search_run_id(self) -> str | None:
        """The parent run of the experiment's most recent search, or None."""
        runs = self.client.search_runs([self.experiment_id], filter_string=f"tags.`{ROLE_TAG}` = '{ROLE_SEARCH}'",
                                       order_by=["attributes.start_time DESC"], max_results=1)
        return runs[0].info.run_id if runs else None

    def search_run_id(self, requested: str | None, experiment: str) -> str:
        """The search a reading command (``cmpnas pareto``) shows: ``requested`` once checked to be a search
        run of this experiment, else the experiment's latest search."""
        where = f"experiment '{experiment}' at {redact_uri(self.tracking_uri)}"
        if requested is None:
            latest = self.latest_search_run_id()
            if latest is None:
                raise ExperimentNotFoundError(f"{where} has no cmpnas search runs; run `cmpnas search` first")
            return latest
        try:
            run = self.client.get_run(requested)
        except MlflowException as error:
            raise ExperimentNotFoundError(f"--search-run-id {requested!r}: no such run at "
                                          f"{redact_uri(self.tracking_uri)}; leave it out to read the latest search "
                                          f"of {where}") from error
        if run.info.experiment_id != self.experiment_id or run.data.tags.get(ROLE_TAG) != ROLE_SEARCH:
            raise ExperimentNotFoundError(f"--search-run-id {requested!r} is not the parent run of a search in "
                                          f"{where} (a candidate's run id goes to `cmpnas export "
                                          "--candidate-run-id`); leave it out to read the latest search")
        return requested


class _TimedClient:
    """An MlflowClient that adds the wall time of every call to its tracker's ``seconds_in_calls``,
    so a search can say what tracking cost it."""

    def __init__(self, client: MlflowClient, tracker: SearchTracker):
        self._client, self._tracker = client, tracker

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._client, name)
        if not callable(attribute):
            return attribute

        @functools.wraps(attribute)
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return attribute(*args, **kwargs)
            finally:
                self._tracker.seconds_in_calls += time.perf_counter() - started

        return timed
