"""The Tune callback that turns a search's trials into MLflow child runs, through the journal.

One child run per trial (role ``candidate``, or ``final_training`` for the front's final training,
tagged with the candidate run it retrains): the architecture as params, per-epoch metrics, the final metrics and
params (``workers.trial_report``), the model as artifacts, and a terminal status. Rules:

* a tracking error never fails a trial (``tracking_must_not_fail_trials``): Tune would re-run a
  finished candidate because its upload failed;
* every write goes through the search's ``TrackingJournal``, keyed, so each logical record (a
  trial's run, one epoch's metrics, its final metrics) is written once per search, whatever is
  replayed, retried or resumed;
* a trial met again (retried, or resumed after the driver died) re-attaches to its child run,
  found by ``tags.TRIAL_ID_TAG`` under the parent run;
* trials still open when the experiment ends are KILLED, so no run stays RUNNING;
* with its final result a child run gets ``tags.COMPATIBILITY_TAG`` = ``passed`` / ``failed``, the
  compatibility check of ``workers.trial_report.Scoring.verdict`` on the search's metric
  (``search.metric``) and the ``evaluation`` ratios, against the paragon and chance too; no tag
  when there is no verdict.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray.tune import Callback

from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.journal import TrackingJournal, trial_ref
from orchestrator.tracking.tags import (
    COMPATIBILITY_TAG,
    ERROR_TAG,
    LAST_RETRY_ERROR_TAG,
    PARENT_RUN_TAG,
    RETRIES_TAG,
    ROLE_CANDIDATE,
    ROLE_TAG,
    SOURCE_RUN_TAG,
    STOPPED_EARLY_TAG,
    TRIAL_ID_TAG,
)
from search_space import ArchSpec
from workers.trial_report import (
    DEFAULT_SCORING,
    MODEL_FILE,
    SPEC_FILE,
    Scoring,
    epoch_metrics,
    final_metrics,
    final_params,
    is_final_result,
)

logger = logging.getLogger(__name__)


def tracking_must_not_fail_trials(hook):
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


class JournaledCallback(Callback):
    """A Tune callback that writes to a search's parent run and child runs through its journal.

    Without ``journal`` the writes go straight to MLflow (``folder=None``). Tune pickles its
    callbacks into the experiment (tuner.pkl): a journaled callback is restored onto the journal
    the resuming driver opened, with the tracking URI of the resume.
    """

    def __init__(self, tracker: SearchTracker, parent_run_id: str, journal: TrackingJournal | None = None):
        self.tracker = tracker
        self.parent_run_id = parent_run_id
        self.journal = journal or TrackingJournal(tracker, parent_run_id, folder=None)

    def __getstate__(self) -> dict[str, Any]:
        state = {key: value for key, value in self.__dict__.items() if key not in ("tracker", "journal")}
        if self.journal.folder is None:
            return {**state, "tracker": self.tracker, "journal_folder": None}
        return {**state, "journal_folder": str(self.journal.folder)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        folder = state.pop("journal_folder")
        tracker = state.pop("tracker", None)
        self.__dict__.update(state)
        if folder is None:
            self.tracker, self.journal = tracker, TrackingJournal(tracker, self.parent_run_id, folder=None)
            return
        journal = TrackingJournal.opened(Path(folder))
        if journal is None or journal.parent_run_id != self.parent_run_id:
            raise RuntimeError(f"restore the search with `cmpnas search --resume`: the tracking journal "
                               f"{folder} must be opened by the resuming driver first")
        self.tracker, self.journal = journal.tracker, journal


@dataclass(frozen=True)
class RunRole:
    """What the trials' child runs are: searched candidates (``ROLE_CANDIDATE``), or final trainings of
    front candidates (``ROLE_FINAL_TRAINING``, with ``source_runs`` mapping each retrained
    architecture, its trial config's ``arch``, to the candidate run it retrains)."""

    role: str = ROLE_CANDIDATE
    source_runs: Mapping[str, str] = field(default_factory=dict)

    @property
    def run_name_infix(self) -> str:
        return "" if self.role == ROLE_CANDIDATE else "final-"


class MlflowTrialCallback(JournaledCallback):
    """One child run per trial (see the module's rules), judged by the search's ``scoring``."""

    def __init__(self, tracker: SearchTracker, parent_run_id: str, journal: TrackingJournal | None = None,
                 scoring: Scoring = DEFAULT_SCORING, runs: RunRole = RunRole()):
        super().__init__(tracker, parent_run_id, journal)
        self.scoring = scoring
        self.runs = runs
        self.started: set[str] = set()
        self.ended: set[str] = set()

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        # Which trials this session started: a restored callback starts a new session. Trials the
        # snapshot saw running may have finished since; ending them KILLED would be wrong.
        self.started, self.ended = set(), set()

    @property
    def run_ids(self) -> dict[str, str | None]:
        """MLflow run ids of the trials this callback started (None while not yet sent)."""
        return {trial_id: self.journal.run_id(trial_ref(trial_id)) for trial_id in self.started}

    @tracking_must_not_fail_trials
    def on_trial_start(self, iteration, trials, trial, **info):
        ref = trial_ref(trial.trial_id)
        spec = ArchSpec.from_json(trial.config["arch"])
        self.started.add(trial.trial_id)
        self.ended.discard(trial.trial_id)
        tags = {PARENT_RUN_TAG: self.parent_run_id, TRIAL_ID_TAG: trial.trial_id, ROLE_TAG: self.runs.role}
        if trial.config["arch"] in self.runs.source_runs:
            tags[SOURCE_RUN_TAG] = self.runs.source_runs[trial.config["arch"]]
        created = self.journal.create_run(ref, f"{spec.arch_id}-{self.runs.run_name_infix}{trial.trial_id}", tags,
                                          key=f"{ref}/run")
        self.journal.log_params(ref, architecture_params(spec), key=f"{ref}/architecture")
        if not created:  # retried, or resumed after an interruption that ended its run KILLED
            self.journal.set_status(ref, "RUNNING")

    @tracking_must_not_fail_trials
    def on_trial_recover(self, iteration, trials, trial, **info):
        self.journal.set_tags(trial_ref(trial.trial_id), {
            RETRIES_TAG: str(getattr(trial, "num_failures", 0)), LAST_RETRY_ERROR_TAG: _error_text(trial),
        })

    @tracking_must_not_fail_trials
    def on_trial_result(self, iteration, trials, trial, result, **info):
        ref = trial_ref(trial.trial_id)
        epoch = int(result.get("epoch", result.get("training_iteration", 0)))
        self.journal.log_metrics(ref, epoch_metrics(result), step=epoch, key=f"{ref}/epoch/{epoch}")
        if is_final_result(result):
            self.journal.log_metrics(ref, final_metrics(result), key=f"{ref}/final")
            self.journal.log_params(ref, final_params(result), key=f"{ref}/final-params")
            verdict = self.scoring.verdict(result)
            if verdict is not None:
                self.journal.set_tags(ref, {COMPATIBILITY_TAG: verdict}, key=f"{ref}/compatibility")

    @tracking_must_not_fail_trials
    def on_trial_complete(self, iteration, trials, trial, **info):
        ref = trial_ref(trial.trial_id)
        checkpoint = trial.checkpoint
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                for name in (MODEL_FILE, SPEC_FILE):
                    if (Path(folder) / name).is_file():
                        self.journal.log_artifact(ref, Path(folder) / name, "model", key=f"{ref}/model/{name}")
        last = getattr(trial, "last_result", None) or {}
        if not is_final_result(last):
            self.journal.set_tags(ref, {STOPPED_EARLY_TAG: "true"})
            if "epoch" in last:
                self.journal.log_metrics(ref, {"stopped_at_epoch": last["epoch"]}, key=f"{ref}/stopped")
        self.journal.set_status(ref, "FINISHED")
        self.ended.add(trial.trial_id)

    @tracking_must_not_fail_trials
    def on_trial_error(self, iteration, trials, trial, **info):
        ref = trial_ref(trial.trial_id)
        self.journal.set_tags(ref, {ERROR_TAG: _error_text(trial)})
        self.journal.set_status(ref, "FAILED")
        self.ended.add(trial.trial_id)

    @tracking_must_not_fail_trials
    def on_experiment_end(self, trials, **info):
        """Trials still open when the experiment stops (interrupted, search ended) are KILLED."""
        for trial_id in sorted(self.started - self.ended):
            self.journal.set_status(trial_ref(trial_id), "KILLED")
            self.ended.add(trial_id)
        self.journal.flush()


def _error_text(trial) -> str:
    error_file = getattr(trial, "error_file", None)
    return Path(error_file).read_text()[-4000:] if error_file and Path(error_file).is_file() else "trial failed"


def architecture_params(spec: ArchSpec) -> dict[str, Any]:
    params: dict[str, Any] = {"arch_id": spec.arch_id, "arch_json": spec.to_json(), "space": spec.space,
                              "resolution": spec.resolution, "embed_dim": spec.embed_dim}
    for index, stage in enumerate(spec.stages):
        for gene in ("depth", "kernel", "expand", "width"):
            params[f"stage{index}_{gene}"] = getattr(stage, gene)
    return params
