"""Final training of the front (``search.final_training``): the survivors trained again, longer.

Rules:
* it runs after the front is recorded (phase ``final_training``, ``orchestrator.search_state``), on
  the front's candidates only, in order of FLOPs;
* each candidate starts again from the weights its trial started from (random in mode ``scratch``,
  the supernet's slice with recalibrated batch norm in the inherit modes; ``workers.trial``) and
  trains ``search.final_training.epochs`` epochs (more than ``training.epochs``, and never fewer
  than a trial trained: ``final_training_epochs``), with the trials' losses, batch size, learning
  rate and seed, on the same train split: only the schedule is longer;
* the trainings are one Ray Tune experiment (``final_training-<session>`` beside the search's), so
  they run on the cluster with the trials' resources and retries; each is a child run of the
  search with role ``final_training`` (``tags.ROLE_FINAL_TRAINING``), tagged with the candidate run
  it retrains (``tags.SOURCE_RUN_TAG``), and reports as a trial does (``workers.trial_report``);
* nothing is selected on a final training: the front stays the search's, and the table
  (``final_training.csv``, on the terminal, on the parent run; ``orchestrator.final_training_report``)
  shows each candidate as searched and after final training, on the held-out splits when the
  search has a validation split;
* a resumed search (killed during final training) keeps the final trainings that FINISHED, marks
  the others superseded (``tags.SUPERSEDED_TAG``) and runs the missing ones again.
"""

from __future__ import annotations

import time
from dataclasses import replace

from orchestrator.config import CmpnasConfig
from orchestrator.final_training_report import (FINAL_TRAINING_FILE, FinalTrainingRow, collect_final_training,
                                                final_training_runs, write_final_training_csv)
from orchestrator.journal import PARENT
from orchestrator.pareto_report import ParetoReport
from orchestrator.search_context import SearchContext
from orchestrator.search_records import supersede_run
from orchestrator.tags import ROLE_FINAL_TRAINING, ROLE_TAG, SOURCE_RUN_TAG
from orchestrator.tracking import SearchTracker
from orchestrator.trials import SEARCH_MODE, candidate_trainable, shared_trial_inputs, trial_callbacks
from orchestrator.tune_logs import quiet_staging_races


def final_training_epochs(config: CmpnasConfig, train_images: int) -> int:
    """search.final_training.epochs, and never fewer than a trial trained (``training.min_steps`` may
    have raised the trials' epochs on a small train split)."""
    return max(config.search.final_training.epochs, config.training.epochs_for(train_images))


def run_final_training(ctx: SearchContext, report: ParetoReport) -> list[FinalTrainingRow]:
    """Train the front again with search.final_training's schedule and record it (module rules)."""
    from ray import tune

    config, journal = ctx.config, ctx.journal
    epochs = final_training_epochs(config, len(ctx.inputs.data.train))
    tracker = journal.tracker
    finished = {run.data.tags.get(SOURCE_RUN_TAG) for run in final_training_runs(tracker, ctx.state.parent_run_id)}
    supersede_unfinished_final_runs(tracker, ctx.state.parent_run_id)
    todo = [row for row in report.front if row.run_id not in finished]
    started = time.perf_counter()
    if todo:
        archs = {row.run_id: tracker.client.get_run(row.run_id).data.params["arch_json"] for row in todo}
        shared = shared_trial_inputs(ctx)
        ctx.console.log(f"final training: {len(todo)} front candidate(s), {epochs} epochs each (search.final_training"
                        f"; the trials trained {shared.training.optim.epochs})")
        quiet_staging_races()
        shared = replace(shared, training=replace(shared.training, optim=replace(shared.training.optim, epochs=epochs)))
        storage_path, _, name = ctx.state.tune_experiment_path.rpartition("/")
        tuner = tune.Tuner(
            candidate_trainable(ctx, shared),
            param_space={"arch": tune.grid_search([archs[row.run_id] for row in todo])},
            tune_config=tune.TuneConfig(metric=config.search.metric, mode=SEARCH_MODE,
                                        max_concurrent_trials=config.search.max_concurrent,
                                        trial_dirname_creator=lambda trial: f"final_{trial.trial_id}",
                                        reuse_actors=True),
            run_config=tune.RunConfig(
                name=f"{name}-final_training-{ctx.state.sessions}", storage_path=storage_path,
                callbacks=trial_callbacks(ctx, len(todo), epochs, role=ROLE_FINAL_TRAINING,
                                          source_runs={arch: run_id for run_id, arch in archs.items()}),
                failure_config=tune.FailureConfig(max_failures=config.resources.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                verbose=0,
            ),
        )
        results = tuner.fit()
        if results.num_errors:
            ctx.console.log(f"final training: {results.num_errors} of {len(todo)} failed (see their child runs); "
                            "the front is reported with the others")
    journal.flush(wait=True)
    rows = collect_final_training(tracker, ctx.state.parent_run_id, report)
    path = write_final_training_csv(rows, ctx.output_dir / FINAL_TRAINING_FILE)
    journal.log_artifact(PARENT, path, key=f"parent/final_training/{ctx.state.sessions}")
    journal.log_metrics(PARENT, {"stage_final_training_seconds": time.perf_counter() - started,
                                 "final_training_runs": len(rows)}, step=ctx.state.sessions - 1,
                        key=f"parent/final_training_summary/{ctx.state.sessions}")
    return rows


def supersede_unfinished_final_runs(tracker: SearchTracker, parent_run_id: str) -> None:
    """Final trainings an earlier session left unfinished: marked superseded (and KILLED if RUNNING)."""
    for run in tracker.child_runs(parent_run_id):
        if run.data.tags.get(ROLE_TAG) == ROLE_FINAL_TRAINING and run.info.status != "FINISHED":
            supersede_run(tracker, run)
