"""The candidates of a search as one Ray Tune experiment: a new one, or the interrupted one continued.

Rules:
* what all trials share (data, gallery embeddings, training settings, the supernet's weights)
  travels once through the object store (``tune.with_parameters``); a trial's config carries only
  its architecture (``{"arch": spec_json}``);
* a search's trials and its final trainings (``orchestrator.final_training``) share one trainable
  (``candidate_trainable``) and one pair of callbacks (``trial_callbacks``): MLflow child runs and
  the terminal's progress;
* trials reuse their Ray actors: a fresh actor per trial re-imports torch and re-fetches the
  shared inputs, 8-14 s of idle slot per trial on a 2-core machine;
* the Tune experiment lives at ``SearchState.tune_experiment_path``; a resumed search restores it
  when Tune left a snapshot of its trials: finished trials stay finished, unfinished ones continue
  from their last checkpoint, the searcher from its saved state, and trials that exhausted their
  retries stay failed. Without a snapshot (a driver killed before Tune's first one) the
  experiment starts again;
* Tune's report of a benign race in copying its snapshots to storage stays off the terminal, on
  every ending (``orchestrator.tune_logs``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

from ray import tune
from ray.tune import Callback
from ray.tune.search import Searcher

from orchestrator.early_stopping import create_scheduler
from orchestrator.mlflow_callback import MlflowTrialCallback
from orchestrator.progress import RichProgressCallback
from orchestrator.search_context import SearchContext
from orchestrator.tags import ROLE_CANDIDATE
from orchestrator.tune_logs import quiet_staging_races
from workers.candidate_training import CandidateTrainingSettings
from workers.fit import OptimSettings
from workers.trial import SharedTrialInputs, run_candidate_trial

# The metric is config.search.metric; every metric a task reports (evaluators.tasks) is maximised.
SEARCH_MODE = "max"


def trial_epochs(ctx: SearchContext) -> int:
    """Epochs of one candidate: the mode's, raised to reach ``training.min_steps`` on this train split."""
    return ctx.config.training.epochs_for(len(ctx.inputs.data.train))


def shared_trial_inputs(ctx: SearchContext) -> SharedTrialInputs:
    config = ctx.config
    training = config.training
    return SharedTrialInputs(
        data=ctx.inputs.data,
        gallery=ctx.embeddings,
        training=CandidateTrainingSettings(
            optim=OptimSettings(epochs=trial_epochs(ctx), batch_size=training.batch_size, lr=training.lr,
                                weight_decay=training.weight_decay, seed=config.search.seed),
            loss_weights=dict(training.loss_weights),
            loss_parameters={name: dict(values) for name, values in training.loss_parameters.items()},
            channels_last=training.channels_last,
            mixed_precision=training.mixed_precision,
            augmentation=ctx.inputs.augmentation,
        ),
        gallery_loader=ctx.inputs.gallery_loader if ctx.inputs.augmentation is not None else None,
        paragon_flops=ctx.paragon.cost.flops,
        threads_per_trial=max(1, math.ceil(config.resources.cpus_per_trial)),
        measure_latency=config.resources.measure_latency,
        mode=training.mode,
        supernet_state=ctx.supernet_state,
        calibration_images=config.supernet.calibration_images,
        task=config.evaluation.task,
        held_out=ctx.inputs.held_out,
    )


def candidate_trainable(ctx: SearchContext, shared: SharedTrialInputs):
    """``run_candidate_trial`` over ``shared`` (put once in the object store), with the CPUs and GPUs
    of ``resources.cpus_per_trial``/``gpus_per_trial`` per trial."""
    resources = ctx.config.resources
    return tune.with_resources(tune.with_parameters(run_candidate_trial, shared=shared),
                               {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial})


def trial_callbacks(ctx: SearchContext, num_trials: int, epochs: int, role: str = ROLE_CANDIDATE,
                    source_runs: dict[str, str] | None = None) -> list[Callback]:
    """Each trial a child run of the search (``role``; ``source_runs``: see ``MlflowTrialCallback``),
    and its progress on the terminal (``num_trials`` of ``epochs`` epochs each)."""
    config = ctx.config
    return [
        MlflowTrialCallback(ctx.journal.tracker, ctx.journal.parent_run_id, ctx.journal, metric=config.search.metric,
                            compatibility_ratio=config.evaluation.compatibility_ratio, role=role,
                            source_runs=source_runs),
        RichProgressCallback(ctx.console, num_trials, epochs, metric=config.search.metric,
                             compatibility_ratio=config.evaluation.compatibility_ratio),
    ]


def run_trials(ctx: SearchContext, searcher: Searcher, extra_callbacks: Sequence[Callback] = ()) -> tune.ResultGrid:
    config, resources = ctx.config, ctx.config.resources
    quiet_staging_races()
    trainable = candidate_trainable(ctx, shared_trial_inputs(ctx))
    experiment_path = ctx.state.tune_experiment_path
    if ctx.state.sessions > 1 and can_restore(experiment_path):
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
        return tuner.fit()
    storage_path, _, name = experiment_path.rpartition("/")
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=config.search.metric, mode=SEARCH_MODE, search_alg=searcher,
            scheduler=create_scheduler(config.search, max(1, trial_epochs(ctx))),
            num_samples=config.search.num_candidates, max_concurrent_trials=config.search.max_concurrent,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=[*trial_callbacks(ctx, config.search.num_candidates, trial_epochs(ctx)), *extra_callbacks],
            failure_config=tune.FailureConfig(max_failures=resources.max_failures),
            # Every epoch's checkpoint is kept (a small query model each): Tune's experiment snapshot can
            # lag the trials, and a resume restores the checkpoint the snapshot names. With only the
            # newest kept, a driver killed between a trial's next checkpoint and the next snapshot left
            # the named one deleted, and the trial failed on resume. Re-reported epochs are journaled
            # by key, so MLflow still records each epoch once.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
            verbose=0,
        ),
    )
    return tuner.fit()


def can_restore(experiment_path: str) -> bool:
    """Tune can continue the experiment: its tuner and (for a local folder) a snapshot of its trials
    exist. A driver killed before Tune's first snapshot leaves only the tuner: start it again."""
    if not tune.Tuner.can_restore(experiment_path):
        return False
    local = Path(experiment_path)
    return "://" in experiment_path or any(local.glob("experiment_state-*.json"))


def tune_trial_id(result: tune.Result) -> str:
    return Path(result.path).name.removeprefix("trial_")
