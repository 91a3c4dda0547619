"""One Ray Tune experiment of a job, built one way for a search's trials, its final training and the
supernet training (``create_tuner``).

Rules:
* the experiment lives at ``TuneExperiment.path`` (``<storage path>/<name>``: a folder every node
  sees, or a URI); each trial's folder is ``<trial_prefix>_<trial id>``;
* trials reuse their Ray actors: a fresh actor per trial re-imports torch and re-fetches the shared
  inputs, 8-14 s of idle slot per trial on a 2-core machine;
* a failed trial is retried ``max_failures`` times from its last checkpoint; ``checkpoints_kept``
  checkpoints are kept per trial (None: every one, as a search's trials need: Tune's experiment
  snapshot can lag the trials, and a resume restores the checkpoint the snapshot names);
* Tune's own console output is off (the job prints its own progress), and its report of a benign
  race in copying snapshots to storage stays off the terminal (``orchestrator.common.tune_logs``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import TrialScheduler
from ray.tune.search import Searcher

from orchestrator.common.tune_logs import quiet_staging_races


@dataclass(frozen=True)
class TuneExperiment:
    """Where an experiment lives and how its trials are kept: see the module's rules."""

    path: str
    trial_prefix: str = "trial"
    callbacks: Sequence[Callback] = ()
    max_failures: int = 0
    checkpoints_kept: int | None = None


@dataclass(frozen=True)
class TrialPlan:
    """Which trials an experiment runs: ``num_samples`` from ``search_alg`` (or a ``param_space``
    grid), scored by ``metric``/``mode``, at most ``max_concurrent`` at once, under ``scheduler``."""

    num_samples: int = 1
    metric: str | None = None
    mode: str | None = None
    search_alg: Searcher | None = None
    scheduler: TrialScheduler | None = None
    param_space: dict[str, Any] | None = None
    max_concurrent: int | None = None


def create_tuner(trainable, experiment: TuneExperiment, trials: TrialPlan = TrialPlan()) -> tune.Tuner:
    """A ``tune.Tuner`` of ``trainable`` (see the module's rules)."""
    quiet_staging_races()
    storage_path, _, name = experiment.path.rstrip("/").rpartition("/")
    prefix = experiment.trial_prefix
    return tune.Tuner(
        trainable,
        param_space=trials.param_space,
        tune_config=tune.TuneConfig(
            metric=trials.metric, mode=trials.mode, search_alg=trials.search_alg, scheduler=trials.scheduler,
            num_samples=trials.num_samples, max_concurrent_trials=trials.max_concurrent,
            trial_dirname_creator=lambda trial: f"{prefix}_{trial.trial_id}", reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name, storage_path=storage_path, callbacks=list(experiment.callbacks),
            failure_config=tune.FailureConfig(max_failures=experiment.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=experiment.checkpoints_kept),
            verbose=0,
        ),
    )


def restore_tuner(path: str, trainable) -> tune.Tuner:
    """The experiment at ``path`` continued: finished trials stay finished, unfinished ones continue
    from their last checkpoint, trials that exhausted their retries stay failed."""
    quiet_staging_races()
    return tune.Tuner.restore(path, trainable=trainable, resume_unfinished=True, resume_errored=False,
                              restart_errored=False)


def can_restore(path: str) -> bool:
    """Tune can continue the experiment at ``path``: its tuner and (for a local folder) a snapshot of
    its trials are there. A driver killed before Tune's first snapshot leaves only the tuner."""
    if not tune.Tuner.can_restore(path):
        return False
    return "://" in path or any(Path(path).glob("experiment_state-*.json"))
