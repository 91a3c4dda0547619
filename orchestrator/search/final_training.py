"""Final training of the front (``search.final_training``): the survivors trained again, longer.

Rules:
* it runs after the front is recorded (phase ``final_training``, ``orchestrator.search.state``), on
  the front's candidates only, in order of FLOPs;
* each candidate starts again from the weights its trial started from (random in mode ``scratch``,
  the supernet's slice with recalibrated batch norm in the inherit modes; ``workers.trial``) and
  trains ``search.final_training.epochs`` epochs (more than ``training.epochs``; where
  ``training.min_steps`` raised the trials' epochs on a small train split, raised by the same
  factor, so it stays the longer schedule: ``final_training_epochs``), with the trials' losses, batch size, learning
  rate and seed, on the same train split: only the schedule is longer (with ``data.trial_train_size``,
  on the whole train split the trials' subset was drawn from);
* the trainings are one Ray Tune experiment (``final_training-<session>`` beside the search's), so
  they run on the cluster with the trials' resources and retries; each is a child run of the
  search with role ``final_training`` (``tags.ROLE_FINAL_TRAINING``), tagged with the candidate run
  it retrains (``tags.SOURCE_RUN_TAG``), and reports as a trial does (``workers.trial_report``);
* nothing is selected on a final training: the front stays the search's, and the table
  (``final_training.csv``, on the terminal, on the parent run; ``orchestrator.results.final_training``)
  shows each candidate as searched and after final training, on the held-out splits when the
  search has a validation split;
* a resumed search (killed during final training) keeps the final trainings that FINISHED, marks
  the others superseded (``tags.SUPERSEDED_TAG``) and runs the missing ones again.
"""

from __future__ import annotations

import time

from ray import tune

from orchestrator.config import CmpnasConfig
from orchestrator.results.final_training import (
    FINAL_TRAINING_FILE,
    FinalTrainingRow,
    collect_final_training,
    final_training_runs,
    write_final_training_csv,
)
from orchestrator.results.front import ParetoReport
from orchestrator.search.context import SearchContext
from orchestrator.search.trials import (
    SEARCH_MODE,
    candidate_trainable,
    shared_trial_inputs,
    trial_callbacks,
    trial_epochs,
    trial_train_images,
)
from orchestrator.setup.tune_experiment import TrialPlan, TuneExperiment, create_tuner
from orchestrator.tracking.callbacks import RunRole
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.journal import PARENT
from orchestrator.tracking.tags import ROLE_FINAL_TRAINING, ROLE_TAG, SOURCE_RUN_TAG


def final_training_epochs(config: CmpnasConfig, train_images: int) -> int:
    """search.final_training.epochs, raised by the factor ``training.min_steps`` raised the trials'
    epochs on a small train split: final training stays the longer schedule, by the ratio the
    configuration asked (``search.final_training.epochs`` / the trials' epochs)."""
    final, asked = config.search.final_training.epochs, config.training.trial_epochs
    trained = config.training.epochs_for(train_images)
    if asked == 0 or trained == asked:
        return max(final, trained)
    return -(-final * trained // asked)


def run_final_training(ctx: SearchContext, report: ParetoReport) -> list[FinalTrainingRow]:
    """Train the front again with search.final_training's schedule and record it (module rules)."""
    journal, tracker = ctx.journal, ctx.journal.tracker
    finished = {run.data.tags.get(SOURCE_RUN_TAG) for run in final_training_runs(tracker, ctx.state.parent_run_id)}
    supersede_unfinished_final_runs(tracker, ctx.state.parent_run_id)
    todo = [row for row in report.front if row.run_id not in finished]
    started = time.perf_counter()
    if todo:
        _train_again(ctx, {row.run_id: tracker.client.get_run(row.run_id).data.params["arch_json"] for row in todo})
    journal.flush(wait=True)
    rows = collect_final_training(tracker, ctx.state.parent_run_id, report)
    path = write_final_training_csv(rows, ctx.output_dir / FINAL_TRAINING_FILE)
    journal.log_artifact(PARENT, path, key=f"parent/final_training/{ctx.state.sessions}")
    journal.log_metrics(PARENT, {"stage_final_training_seconds": time.perf_counter() - started,
                                 "final_training_runs": len(rows)}, step=ctx.state.sessions - 1,
                        key=f"parent/final_training_summary/{ctx.state.sessions}")
    return rows


def _train_again(ctx: SearchContext, archs: dict[str, str]) -> None:
    """One Tune experiment training each architecture of ``archs`` (candidate run id -> arch JSON) again."""
    config = ctx.config
    epochs = final_training_epochs(config, trial_train_images(ctx))
    ctx.console.log(f"final training: {len(archs)} front candidate(s), {epochs} epochs each (search.final_training"
                    f"; the trials trained {trial_epochs(ctx)})")
    runs = RunRole(ROLE_FINAL_TRAINING, {arch: run_id for run_id, arch in archs.items()})
    experiment = TuneExperiment(f"{ctx.state.tune_experiment_path}-final_training-{ctx.state.sessions}",
                                trial_prefix="final", callbacks=trial_callbacks(ctx, len(archs), epochs, runs),
                                max_failures=config.resources.max_failures, checkpoints_kept=1)
    trials = TrialPlan(metric=ctx.scoring.metric, mode=SEARCH_MODE, max_concurrent=config.search.max_concurrent,
                       param_space={"arch": tune.grid_search(list(archs.values()))})
    shared = shared_trial_inputs(ctx, epochs, final_training=True)
    results = create_tuner(candidate_trainable(ctx, shared), experiment, trials).fit()
    if results.num_errors:
        ctx.console.log(f"final training: {results.num_errors} of {len(archs)} failed (see their child runs); "
                        "the front is reported with the others")


def supersede_unfinished_final_runs(tracker: SearchTracker, parent_run_id: str) -> None:
    """Final trainings an earlier session left unfinished: marked superseded (and KILLED if RUNNING)."""
    for run in tracker.child_runs(parent_run_id):
        if run.data.tags.get(ROLE_TAG) == ROLE_FINAL_TRAINING and run.info.status != "FINISHED":
            tracker.supersede(run)
