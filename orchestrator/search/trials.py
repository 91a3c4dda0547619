"""The candidates of a search as one Ray Tune experiment: a new one, or the interrupted one continued.

Rules:
* what all trials share (data, gallery embeddings, training settings, the supernet's weights)
  travels once through the object store (``tune.with_parameters``); a trial's config carries only
  its architecture (``{"arch": spec_json}``);
* a search's trials and its final trainings (``orchestrator.search.final_training``) share one
  trainable (``candidate_trainable``) and one pair of callbacks (``trial_callbacks``): MLflow child
  runs and the terminal's progress;
* with ``data.trial_train_size`` the trials train on a fixed stratified subset of the train split
  (``trial_train_view``: ``data.seed``, the same images for every trial of every strategy, their
  gallery embeddings the rows of the whole split's), while final training trains on all of it;
  validation and held-out splits are the same for both;
* the experiment is built by ``orchestrator.setup.tune_experiment`` (actors reused, every
  checkpoint kept, Tune's staging races kept off the terminal) and lives at
  ``SearchState.tune_experiment_path``; a resumed search restores it when Tune left a snapshot of
  its trials: finished trials stay finished, unfinished ones continue from their last checkpoint,
  the searcher from its saved state, and trials that exhausted their retries stay failed. Without a
  snapshot (a driver killed before Tune's first one) the experiment starts again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from ray import tune
from ray.tune import Callback
from ray.tune.search import Searcher

from orchestrator.search.context import SearchContext
from orchestrator.search.progress import RichProgressCallback
from orchestrator.search.schedulers import create_scheduler
from orchestrator.setup.tune_experiment import TrialPlan, TuneExperiment, can_restore, create_tuner, restore_tuner
from orchestrator.tracking.callbacks import MlflowTrialCallback, RunRole
from workers.compatibility.training import CompatibilityTrainingSettings
from workers.datasets import RetrievalData
from workers.datasets.splits import stratified_split
from workers.gallery.embeddings import GalleryEmbeddings
from workers.training.fit import OptimSettings
from workers.trial import SharedTrialInputs, run_candidate_trial

# The metric is config.search.metric; every metric a task reports (evaluators.tasks) is maximised.
SEARCH_MODE = "max"


def trial_epochs(ctx: SearchContext) -> int:
    """Epochs of one candidate: the mode's, raised to reach ``training.min_steps`` on the trials' train split."""
    return ctx.config.training.epochs_for(trial_train_images(ctx))


def trial_train_images(ctx: SearchContext) -> int:
    """How many images a trial trains on: ``data.trial_train_size`` of the train split, or all of it."""
    size, available = ctx.config.data.trial_train_size, len(ctx.inputs.data.train)
    return available if size is None else min(size, available)


def trial_train_view(data: RetrievalData, gallery: GalleryEmbeddings, size: int | None,
                     seed: int) -> tuple[RetrievalData, GalleryEmbeddings]:
    """``data`` and its gallery embeddings with the train split cut to ``size`` images (stratified by
    ``seed``, in the split's order); ``size`` None or not smaller than the split: both unchanged."""
    if size is None or size >= len(data.train):
        return data, gallery
    (chosen,) = stratified_split(np.asarray(data.train.labels), [size], seed)
    chosen = np.sort(chosen)
    train_embeddings = np.ascontiguousarray(gallery.train[chosen])
    return replace(data, train=data.train.subset(chosen)), replace(gallery, train=train_embeddings)


def shared_trial_inputs(ctx: SearchContext, epochs: int, final_training: bool = False) -> SharedTrialInputs:
    """What every trial of ``ctx``'s search gets, each candidate training ``epochs`` epochs: on the
    trials' train split (``data.trial_train_size``), or with ``final_training`` on the whole of it."""
    config, inputs = ctx.config, ctx.inputs
    training = config.training
    size = None if final_training else config.data.trial_train_size
    data, gallery = trial_train_view(inputs.data, inputs.embeddings, size, config.data.seed)
    return SharedTrialInputs(
        data=data,
        gallery=gallery,
        training=CompatibilityTrainingSettings(
            optim=OptimSettings(epochs=epochs, batch_size=training.batch_size, lr=training.lr,
                                weight_decay=training.weight_decay, seed=config.search.seed),
            loss_weights=dict(training.loss_weights),
            loss_parameters={name: dict(values) for name, values in training.loss_parameters.items()},
            channels_last=training.channels_last,
            mixed_precision=training.mixed_precision,
            augmentation=inputs.prepared.augmentation,
            unlabelled_weight=training.unlabelled_weight,
            unlabelled_batch_size=training.unlabelled_batch_size,
        ),
        gallery_loader=inputs.prepared.gallery_loader if inputs.prepared.augmentation is not None else None,
        paragon_flops=ctx.paragon.cost.flops,
        threads_per_trial=max(1, math.ceil(config.resources.cpus_per_trial)),
        measure_latency=config.resources.measure_latency,
        mode=training.mode,
        supernet_state=ctx.supernet_state,
        calibration_images=config.supernet.calibration_images,
        task=config.evaluation.task,
        held_out=inputs.held_out,
        agreement_k=config.evaluation.agreement_k,
    )


def candidate_trainable(ctx: SearchContext, shared: SharedTrialInputs):
    """``run_candidate_trial`` over ``shared`` (put once in the object store), with the CPUs and GPUs
    of ``resources.cpus_per_trial``/``gpus_per_trial`` per trial."""
    resources = ctx.config.resources
    return tune.with_resources(tune.with_parameters(run_candidate_trial, shared=shared),
                               {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial})


def trial_callbacks(ctx: SearchContext, num_trials: int, epochs: int, runs: RunRole = RunRole()) -> list[Callback]:
    """Each trial a child run of the search (``runs``: see ``RunRole``), and its progress on the
    terminal (``num_trials`` of ``epochs`` epochs each)."""
    return [MlflowTrialCallback(ctx.journal.tracker, ctx.journal.parent_run_id, ctx.journal, ctx.scoring, runs),
            RichProgressCallback(ctx.console, num_trials, epochs, ctx.scoring)]


def run_trials(ctx: SearchContext, searcher: Searcher, extra_callbacks: Sequence[Callback] = ()) -> tune.ResultGrid:
    """The search's trials, new or continued (see the module's rules)."""
    config = ctx.config
    epochs = trial_epochs(ctx)
    trainable = candidate_trainable(ctx, shared_trial_inputs(ctx, epochs))
    path = ctx.state.tune_experiment_path
    if ctx.state.sessions > 1 and can_restore(path):
        return restore_tuner(path, trainable).fit()
    experiment = TuneExperiment(path, callbacks=[*trial_callbacks(ctx, config.search.num_candidates, epochs),
                                                 *extra_callbacks],
                                max_failures=config.resources.max_failures)
    trials = TrialPlan(num_samples=config.search.num_candidates, metric=ctx.scoring.metric, mode=SEARCH_MODE,
                       search_alg=searcher, scheduler=create_scheduler(config.search, max(1, epochs)),
                       max_concurrent=config.search.max_concurrent)
    return create_tuner(trainable, experiment, trials).fit()


def tune_trial_id(result: tune.Result) -> str:
    return Path(result.path).name.removeprefix("trial_")
