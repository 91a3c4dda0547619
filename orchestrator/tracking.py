"""MLflow tracking of a search: one parent run, one child run per trial, driven from the driver.

Workers never talk to MLflow: the driver's Tune callback turns trial results into child runs,
so tracking works the same for local and remote trials and needs credentials on one host only.
All calls go through ``MlflowClient`` with explicit run ids, which is safe from Tune's callback
thread and never depends on a process-global "active run".
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
from mlflow.tracking import MlflowClient
from ray.tune import Callback

from search_space import ArchSpec
from workers.trial import MODEL_FILE, SPEC_FILE

logger = logging.getLogger(__name__)

PARENT_RUN_TAG = "mlflow.parentRunId"
TRIAL_ID_TAG = "cmpnas.trial_id"
ROLE_TAG = "cmpnas.role"
PARETO_TAG = "pareto"
# A trial the scheduler (ASHA) stopped before its last epoch: FINISHED, but without final metrics.
STOPPED_EARLY_TAG = "cmpnas.stopped_early"
# Logged on every epoch; everything else in a trial result is logged once, at the end.
EPOCH_METRICS = ("loss", "cross_r1", "cross_r5", "cross_map", "images_per_second", "epoch_seconds")
# Strings of the last result, logged as params: where and how the trial ran, what fvcore skipped.
FINAL_PARAMS = ("flops_convention", "flops_skipped_ops", "device", "node_id", "mode")
FINAL_METRICS = (
    "cross_r1", "cross_r5", "cross_map", "homo_r1", "homo_r5", "homo_map", "flops", "mflops", "params",
    "cost_reduction", "latency_ms", "trial_seconds", "gpu_max_memory_mb", "trial_cpu_seconds",
)


DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"


def resolve_tracking_uri(configured: str | None) -> str:
    """An explicit ``tracking.uri`` first, then MLflow's ``MLFLOW_TRACKING_URI``, then local sqlite."""
    return configured or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


class SearchTracker:
    """The parent run of one search and the helpers to write it."""

    def __init__(self, tracking_uri: str, experiment: str, create: bool = True):
        # No mlflow.set_tracking_uri: it would also set MLFLOW_TRACKING_URI for the whole process.
        self.tracking_uri = tracking_uri
        self.seconds_in_calls = 0.0
        self.client = _TimedClient(MlflowClient(tracking_uri=tracking_uri), self)
        existing = self.client.get_experiment_by_name(experiment)
        if existing is None and not create:
            raise LookupError(f"no MLflow experiment named '{experiment}' at {tracking_uri}")
        self.experiment_id = existing.experiment_id if existing else self.client.create_experiment(experiment)

    @classmethod
    def open_existing(cls, tracking_uri: str, experiment: str) -> SearchTracker:
        return cls(tracking_uri, experiment, create=False)

    # Tune pickles its callbacks with the experiment state: keep the address, rebuild the client.
    def __getstate__(self) -> dict[str, Any]:
        return {"tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.seconds_in_calls = 0.0
        self.client = _TimedClient(MlflowClient(tracking_uri=self.tracking_uri), self)

    def start_parent(self, run_name: str, tags: dict[str, str]) -> str:
        run = self.client.create_run(self.experiment_id, run_name=run_name, tags={ROLE_TAG: "search", **tags})
        return run.info.run_id

    def log_params(self, run_id: str, params: dict[str, Any]) -> None:
        batch = [Param(key, _param_value(value)) for key, value in params.items()]
        for start in range(0, len(batch), 100):
            self.client.log_batch(run_id, params=batch[start : start + 100])

    def log_metrics(self, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
        batch = [
            Metric(key, float(value), _now_ms(), step)
            for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        ]
        if batch:
            self.client.log_batch(run_id, metrics=batch)

    def log_dict(self, run_id: str, data: Any, artifact_file: str) -> None:
        self.client.log_dict(run_id, data, artifact_file)

    def log_artifact(self, run_id: str, path: str | Path, artifact_path: str | None = None) -> None:
        self.client.log_artifact(run_id, str(path), artifact_path)

    def set_tag(self, run_id: str, key: str, value: str) -> None:
        self.client.set_tag(run_id, key, value)

    def end_run(self, run_id: str, status: str = "FINISHED") -> None:
        self.client.set_terminated(run_id, status=status)

    def child_runs(self, parent_run_id: str) -> list:
        return self.client.search_runs(
            [self.experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'", max_results=10000
        )


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


def _tracking_must_not_fail_trials(hook):
    """Tune treats an exception in a callback as a failure of the trial it was about, and would
    re-run a finished candidate because its MLflow upload failed. Log the error instead."""

    @functools.wraps(hook)
    def guarded(self, *args, **kwargs):
        try:
            return hook(self, *args, **kwargs)
        except Exception:  # noqa: BLE001 - any tracking error, e.g. a server outage
            logger.exception("MLflow tracking failed in %s; the search goes on", hook.__name__)
            return None

    return guarded


class MlflowTrialCallback(Callback):
    """Tune callback: one child run per trial, per-epoch metrics, final metrics and the model."""

    def __init__(self, tracker: SearchTracker, parent_run_id: str):
        self.tracker = tracker
        self.parent_run_id = parent_run_id
        self.run_ids: dict[str, str] = {}
        self.ended: set[str] = set()

    @_tracking_must_not_fail_trials
    def on_trial_start(self, iteration, trials, trial, **info):
        if trial.trial_id in self.run_ids:
            return
        spec = ArchSpec.from_json(trial.config["arch"])
        run = self.tracker.client.create_run(
            self.tracker.experiment_id,
            run_name=f"{spec.arch_id}-{trial.trial_id}",
            tags={PARENT_RUN_TAG: self.parent_run_id, TRIAL_ID_TAG: trial.trial_id, ROLE_TAG: "candidate"},
        )
        self.run_ids[trial.trial_id] = run.info.run_id
        self.tracker.log_params(run.info.run_id, architecture_params(spec))

    @_tracking_must_not_fail_trials
    def on_trial_result(self, iteration, trials, trial, result, **info):
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        # Beside the fixed names, every metric of the evaluation task (cross_*, homo_*; see evaluators.tasks).
        epoch_keys = [key for key in result if key in EPOCH_METRICS or key.startswith("cross_")]
        self.tracker.log_metrics(run_id, {key: result[key] for key in epoch_keys}, step=epoch)
        if all(key in result for key in ("flops", "homo_r1")):
            final_keys = [key for key in result if key in FINAL_METRICS or key.startswith(("cross_", "homo_"))]
            self.tracker.log_metrics(run_id, {f"final_{key}": result[key] for key in final_keys})
            self.tracker.log_params(run_id, {key: result.get(key, "") for key in FINAL_PARAMS})

    @_tracking_must_not_fail_trials
    def on_trial_complete(self, iteration, trials, trial, **info):
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        checkpoint = trial.checkpoint
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                for name in (MODEL_FILE, SPEC_FILE):
                    if (Path(folder) / name).is_file():
                        self.tracker.log_artifact(run_id, Path(folder) / name, "model")
        last = getattr(trial, "last_result", None) or {}
        if not all(key in last for key in ("flops", "homo_r1")):
            self.tracker.set_tag(run_id, STOPPED_EARLY_TAG, "true")
            if "epoch" in last:
                self.tracker.log_metrics(run_id, {"stopped_at_epoch": last["epoch"]})
        self.tracker.end_run(run_id, "FINISHED")
        self.ended.add(trial.trial_id)

    @_tracking_must_not_fail_trials
    def on_trial_error(self, iteration, trials, trial, **info):
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        error_file = getattr(trial, "error_file", None)
        message = Path(error_file).read_text()[-4000:] if error_file and Path(error_file).is_file() else "trial failed"
        self.tracker.set_tag(run_id, "error", message[-5000:])
        self.tracker.end_run(run_id, "FAILED")
        self.ended.add(trial.trial_id)

    @_tracking_must_not_fail_trials
    def on_experiment_end(self, trials, **info):
        """Trials still open when the experiment stops (interrupted, search ended) are KILLED."""
        for trial_id, run_id in self.run_ids.items():
            if trial_id not in self.ended:
                self.tracker.end_run(run_id, "KILLED")
                self.ended.add(trial_id)


def architecture_params(spec: ArchSpec) -> dict[str, Any]:
    params: dict[str, Any] = {"arch_id": spec.arch_id, "arch_json": spec.to_json(), "space": spec.space,
                              "resolution": spec.resolution, "embed_dim": spec.embed_dim}
    for index, stage in enumerate(spec.stages):
        for gene in ("depth", "kernel", "expand", "width"):
            params[f"stage{index}_{gene}"] = getattr(stage, gene)
    return params


def flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "loss_weights":
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _param_value(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list, tuple)) else str(value)
    return text[:6000]


def _now_ms() -> int:
    import time

    return int(time.time() * 1000)
