"""The search driver: one search from its configuration to its Pareto front in MLflow.

Order of work in one search (each stage in its own module):
1. the search state: a new search, or the interrupted one recorded in ``output_dir``
   (``open_search_state``; phases in ``orchestrator.search_state``);
2. data, frozen gallery model and search space, then the gallery's embeddings of every split,
   once (``orchestrator.search_inputs``); the supernet in the inherit modes;
3. the paragon: the gallery model measured against itself (accuracy) and its cost per image;
4. Ray (``orchestrator.ray_cluster``) and the MLflow parent run with config, paragon metrics and
   gallery fingerprint, written through the search's journal (``orchestrator.journal``);
5. the candidates as Tune trials (``orchestrator.trials``), tracked by the Tune callbacks
   (``orchestrator.mlflow_callback``, ``orchestrator.convergence``);
6. the Pareto front from the finished child runs (``orchestrator.search_records``) and, for a
   budget sweep, the best candidate per budget (``orchestrator.budget_report``).
"""

from __future__ import annotations

import csv
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from rich.console import Console

from evaluators import FLOPS_CONVENTION, create_task
from evaluators.complexity import ComplexityReport
from orchestrator import cmpnas_version
from orchestrator.budget_report import best_per_budget, record_budget_sweep
from orchestrator.config import CmpnasConfig
from orchestrator.convergence import SearchConvergenceCallback
from orchestrator.credentials import fields_with_credentials, redact_tree, redact_uri
from orchestrator.dataset_inputs import data_split_inputs
from orchestrator.final_training import run_final_training
from orchestrator.final_training_report import render_final_training
from orchestrator.gallery_setup import paragon_cost
from orchestrator.journal import (
    JOURNAL_FOLDER,
    PARENT,
    TrackingUnavailableError,
    retire_journal,
    unsent_writes,
)
from orchestrator.output_lock import locked_output_dir
from orchestrator.pareto_report import ParetoReport, collect_report, render_table
from orchestrator.ray_cluster import LOCAL, ResourceRequest, connect_ray, ray_address
from orchestrator.ray_join import check_can_join
from orchestrator.search_context import Paragon, SearchContext
from orchestrator.search_inputs import SearchInputs, prepare_output_dir, prepare_search_inputs
from orchestrator.search_records import finalize_search, open_journal, open_tracker, report_unsent_writes
from orchestrator.search_state import (
    RESUMABLE_PHASES,
    ResumeError,
    SearchState,
    check_recorded_tune_path,
    check_resume_config,
    tune_experiment_path,
)
from orchestrator.shortfall import Shortfall, find_shortfall, record_shortfall
from orchestrator.strategies import create_searcher
from orchestrator.strategies.feasibility import check_search_budgets
from orchestrator.strategies.cost import FlopsCounter, WithinBudget
from orchestrator.supernet_setup import load_supernet_for_search, require_supernet_checkpoint
from orchestrator.tags import (
    DATASET_TAG,
    FLOPS_CONVENTION_TAG,
    GALLERY_BACKBONE_TAG,
    GALLERY_FINGERPRINT_TAG,
    GALLERY_SOURCE_TAG,
    SEARCH_ID_TAG,
    SUPERNET_FINGERPRINT_TAG,
    TRAINING_MODE_TAG,
    VERSION_TAG,
)
from orchestrator.tracking import (
    SearchTracker,
    config_params,
    experiment_page_url,
    resolve_tracking_uri,
)
from orchestrator.trials import SEARCH_MODE, run_trials, tune_trial_id
from workers.gallery_embeddings import GalleryEmbeddings
from workers.supernet_checkpoint import SupernetCheckpoint

logger = logging.getLogger(__name__)
# The gallery model's identity (source, fingerprint, input spec), in output_dir and on the parent run.
GALLERY_IDENTITY_FILE = "gallery.json"
# The files of the collection skipped as undecodable, with the reasons (on the parent run).
BAD_FILES_FILE = "bad_files.csv"
# Every epoch reports a checkpoint, so Tune snapshots its state often; the snapshots are small
# here and its "snapshotting too often" warning would flood the terminal.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


@dataclass(frozen=True)
class SearchOutcome:
    parent_run_id: str
    report: ParetoReport
    output_dir: Path
    gallery_images_embedded: int
    # Why the search ended with fewer candidates than search.num_candidates (None: it did not).
    shortfall: Shortfall | None = None


def flops_constraint(max_mflops: float | None, counter: FlopsCounter | None = None) -> WithinBudget | None:
    """A predicate for proposals, or None; FLOPs measured with fvcore on the built candidate."""
    if max_mflops is None:
        return None
    return WithinBudget(counter or FlopsCounter(), max_mflops)


def trial_resources(config: CmpnasConfig) -> ResourceRequest:
    resources = config.resources
    return ResourceRequest("trials", resources.cpus_per_trial, resources.gpus_per_trial,
                           "resources.cpus_per_trial", "resources.gpus_per_trial")


def run_search(config: CmpnasConfig, console: Console | None = None, resume: bool = False,
               lock_wait_s: float = 0.0) -> SearchOutcome:
    """Run a search, or with ``resume`` continue the one recorded in ``output_dir`` (see
    ``orchestrator.search_state``): same MLflow parent run, child runs re-attached by trial id,
    finished trials kept, unfinished ones continued from their last checkpoint. ``lock_wait_s``: how
    long to wait for ``output_dir`` held elsewhere (``orchestrator.output_lock``) before refusing."""
    console = console or Console()
    output_dir = prepare_output_dir(config)
    with locked_output_dir(output_dir, "cmpnas search" + (" --resume" if resume else ""), wait_s=lock_wait_s):
        require_supernet_checkpoint(config)
        warn_of_credentials(config)
        tracking_uri = resolve_tracking_uri(config.tracking.uri)
        state = open_search_state(config, output_dir, tracking_uri, resume)
        try:
            return _run_opened_search(config, console, state, output_dir, tracking_uri)
        except BaseException:
            forget_unstarted_search(state, output_dir)
            raise


def warn_of_credentials(config: CmpnasConfig) -> None:
    """Credentials in a URI are used, never recorded (``orchestrator.credentials``): say what that means."""
    fields = fields_with_credentials(config.model_dump(mode="json"))
    if fields:
        logger.warning("%s holds credentials: they are used by this process but recorded nowhere (state file, "
                       "MLflow params, logs); a resume or `cmpnas sync` needs them again, best from the environment "
                       "(MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD, AWS_*)", ", ".join(fields))


def forget_unstarted_search(state: SearchState, output_dir: Path) -> None:
    """A new search refused before its parent run existed (bad gallery file, data, cluster) recorded
    nothing that a resume could continue: its state file goes, so the next start may use the folder."""
    if state.phase == "starting" and state.parent_run_id is None and state.sessions == 1:
        SearchState.path_in(output_dir).unlink(missing_ok=True)


def _run_opened_search(config: CmpnasConfig, console: Console, state: SearchState, output_dir: Path,
                       tracking_uri: str) -> SearchOutcome:
    log = console.log
    if state.phase == "trials_done":
        final_training = config.search.final_training.epochs > 0
        log("every trial of this search has ended; recording its Pareto front"
            + (" before the final training" if final_training else ""))
        journal = open_journal(open_tracker(tracking_uri, state.experiment), state, output_dir)
        # This session records the front (and trains it again); the count of sessions still says it ran.
        journal.log_metrics(PARENT, {"search_sessions": state.sessions}, key=f"parent/sessions/{state.sessions}")
        report = finalize_search(journal, state, output_dir, console, outage_wait_s=config.tracking.outage_wait_s,
                                 metric=config.search.metric,
                                 compatibility_ratio=config.evaluation.compatibility_ratio,
                                 next_phase="final_training" if final_training else "finished")
        # The failed trials of the ended session are not known here; missing candidates still count.
        shortfall = find_shortfall(config.search, complete=True, trials_started=len(state.trial_ids), trials_failed=0,
                                   candidates_finished=len(report.candidates))
        record_shortfall(journal, config.search, shortfall)
        if not final_training:
            render_table(report, console)
            report_shortfall(shortfall, console)
            return SearchOutcome(state.parent_run_id, report, output_dir, 0, shortfall)
        state = SearchState.load(output_dir)  # phase final_training: it needs the data and Ray, set up below
    search_started = time.perf_counter()

    if ray_address(config.ray) != LOCAL:
        check_can_join(ray_address(config.ray))  # before minutes of data and gallery set-up, not after
    inputs = prepare_search_inputs(config, log, expected_gallery_fingerprint=state.gallery_fingerprint,
                                   resumed=state.sessions > 1)
    check_search_budgets(inputs.space, config.search)  # before the parent run: a refusal records nothing
    # Before the embedding pass: a cost that cannot be measured (gallery.mflops unset) is refused first.
    gallery_cost = paragon_cost(config, inputs.gallery_model)
    supernet = load_supernet_for_search(config, inputs.space, inputs.gallery_model.fingerprint)
    check_resumed_supernet(state, supernet)
    if supernet is not None:
        log(f"training.mode={config.training.mode}: candidates inherit from supernet {config.supernet_checkpoint_path} "
            f"(fingerprint {supernet.fingerprint[:12]})")
    log_schedule(config, inputs, log)

    started = time.perf_counter()
    started_ray = connect_ray(config.ray, [trial_resources(config)])
    inputs.timings["stage_ray_start_seconds"] = time.perf_counter() - started
    try:
        gallery = inputs.embed_gallery(log)  # on Ray Data for a streamed collection, hence after connecting
        paragon = measure_paragon(config, inputs, gallery, gallery_cost)
        searched = config.search.metric.removeprefix("cross_")
        log(f"paragon{' (validation split)' if inputs.held_out else ''}: R@1 {paragon.metrics['paragon_r1']:.2f}, "
            f"mAP {paragon.metrics['paragon_map']:.2f}, {searched} {paragon.metrics['paragon_' + searched]:.2f}, "
            f"{paragon.cost.mflops:.1f} MFLOPs")
        if inputs.held_out is not None:
            log(f"paragon (held out): R@1 {paragon.metrics['paragon_heldout_r1']:.2f}, mAP "
                f"{paragon.metrics['paragon_heldout_map']:.2f}, {searched} "
                f"{paragon.metrics['paragon_heldout_' + searched]:.2f}")
        tracker = open_tracker(tracking_uri, config.tracking.experiment)
        run_name = config.tracking.run_name or f"search-{time.strftime('%Y%m%d-%H%M%S')}"
        state = attach_parent_run(tracker, state, run_name, parent_run_tags(config, inputs, supernet, state),
                                  config, output_dir)
        state.gallery_fingerprint = gallery.fingerprint
        state.gallery = inputs.gallery_model.identity()
        state.save(output_dir)
        journal = open_journal(tracker, state, output_dir)
        if state.sessions > 1:
            journal.set_status(PARENT, "RUNNING")
            log(f"resuming search {state.parent_run_id} (session {state.sessions}); "
                f"{journal.pending} journaled writes still to send")
        log(f"MLflow: experiment '{config.tracking.experiment}', parent run {state.parent_run_id} "
            f"at {redact_uri(tracker.tracking_uri)}")
        ctx = SearchContext(config, inputs, paragon, journal, state, output_dir, console,
                            supernet_state=supernet.state if supernet is not None else None)
        try:
            status, report, shortfall = record_search(ctx)
        except TrackingUnavailableError:
            raise  # nothing failed: the records wait in the journal for `cmpnas sync`
        except BaseException:
            journal.set_status(PARENT, "FAILED")
            journal.flush()
            raise
        # Tracking time overlaps the other stages (MLflow calls made during them); one row per session.
        journal.log_metrics(PARENT, {"stage_tracking_seconds": tracker.seconds_in_calls,
                                     "search_wall_seconds": time.perf_counter() - search_started},
                            step=state.sessions - 1, key=f"parent/wall/{state.sessions}")
        report_unsent_writes(journal, output_dir, console)  # the wall time and budget sweep come after the front
    finally:
        if started_ray:
            ray.shutdown()
    render_table(report, console)
    console.print(f"Pareto table: {output_dir / 'pareto.csv'}; plot: {output_dir / 'pareto.png'}; "
                  + ui_hint(redact_uri(tracker.tracking_uri), tracker.experiment_id), highlight=False)
    report_shortfall(shortfall, console, status)
    return SearchOutcome(state.parent_run_id, report, output_dir, inputs.images_embedded, shortfall)


def ui_hint(tracking_uri: str, experiment_id: str) -> str:
    """Where to see the runs: the server's page, or `mlflow ui` on a local store, opened on the runs
    table (MLflow 3 otherwise opens its GenAI overview in a fresh browser, docs/mlflow.md)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"runs: {experiment_page_url(tracking_uri, experiment_id)}"
    return (f"open the runs with `mlflow ui --backend-store-uri {tracking_uri}`, then "
            f"{experiment_page_url('http://127.0.0.1:5000', experiment_id)}")


def check_resumed_supernet(state: SearchState, supernet: SupernetCheckpoint | None) -> None:
    """A resume inherits from the supernet the search started with, or is refused; a new search records it."""
    fingerprint = supernet.fingerprint if supernet is not None else None
    if state.sessions > 1 and state.supernet_fingerprint is not None and fingerprint != state.supernet_fingerprint:
        found = f"fingerprint {fingerprint[:12]}" if fingerprint else "none (training.mode scratch)"
        raise ResumeError(
            f"the search in this output_dir started with the supernet of fingerprint {state.supernet_fingerprint[:12]}; "
            f"supernet.checkpoint now gives {found}. Its finished trials inherited from the first: resume with that "
            "supernet file, or start a new search in another output_dir"
        )
    state.supernet_fingerprint = fingerprint


def log_schedule(config: CmpnasConfig, inputs: SearchInputs, log) -> None:
    """Say when ``training.min_steps`` raises the candidates' epochs (a small train split)."""
    training = config.training
    epochs = training.epochs_for(len(inputs.data.train))
    if epochs != training.trial_epochs:
        steps = epochs * -(-len(inputs.data.train) // training.batch_size)
        log(f"training.min_steps={training.min_steps}: candidates train {epochs} epochs instead of "
            f"{training.trial_epochs} on {len(inputs.data.train)} training images ({steps} optimizer steps)")


def report_shortfall(shortfall: Shortfall | None, console: Console, status: str = "FINISHED") -> None:
    if shortfall is not None:
        console.print(f"[bold yellow]the search ended short (parent run {status}): {shortfall.reason}[/]; "
                      f"{shortfall.fix}", highlight=False)


def measure_paragon(config: CmpnasConfig, inputs: SearchInputs, gallery: GalleryEmbeddings,
                    cost: ComplexityReport) -> Paragon:
    """The gallery model against itself on the query and gallery splits, with its cost per image; with
    a validation split, on the validation halves (``paragon_*``, what candidates are ranked against)
    and on the held-out splits (``paragon_heldout_*``, what they are reported against)."""
    data, task = inputs.data, create_task(config.evaluation.task)
    metrics = task.evaluate(gallery.query, data.query.labels, gallery.gallery, data.gallery.labels, "paragon")
    held_out = inputs.held_out
    if held_out is not None:
        metrics.update(task.evaluate(held_out.query_embeddings, held_out.query.labels, held_out.gallery_embeddings,
                                     held_out.gallery.labels, "paragon_heldout"))
    return Paragon(metrics, cost)


def parent_run_tags(config: CmpnasConfig, inputs: SearchInputs, supernet: SupernetCheckpoint | None,
                    state: SearchState) -> dict[str, str]:
    gallery_model = inputs.gallery_model
    tags = {GALLERY_FINGERPRINT_TAG: gallery_model.fingerprint, VERSION_TAG: cmpnas_version(),
            FLOPS_CONVENTION_TAG: FLOPS_CONVENTION, DATASET_TAG: inputs.data.name,
            GALLERY_BACKBONE_TAG: gallery_model.description, GALLERY_SOURCE_TAG: gallery_model.source,
            TRAINING_MODE_TAG: config.training.mode, SEARCH_ID_TAG: state.search_id}
    if supernet is not None:
        tags[SUPERNET_FINGERPRINT_TAG] = supernet.fingerprint
    return tags


def open_search_state(config: CmpnasConfig, output_dir: Path, tracking_uri: str, resume: bool) -> SearchState:
    """The search to run: a new one, or with ``resume`` the one recorded in ``output_dir``."""
    recorded = SearchState.load(output_dir)
    requested = config.model_dump(mode="json")
    if not resume:
        if recorded is not None and recorded.phase in RESUMABLE_PHASES:
            raise ResumeError(
                f"{output_dir} holds an unfinished search (parent run {recorded.parent_run_id}, {recorded.phase}): "
                "continue it with `cmpnas search --resume`, or set output_dir to another folder for a new search"
            )
        unsent = unsent_writes(output_dir / JOURNAL_FOLDER)
        if unsent:
            earlier = f" (parent run {recorded.parent_run_id})" if recorded is not None else ""
            raise ResumeError(
                f"{output_dir} holds {unsent} tracking writes of an earlier search{earlier} that never reached "
                f"MLflow: send them with `cmpnas sync --output-dir {output_dir}`, or set output_dir to another "
                "folder for a new search"
            )
        retire_journal(output_dir / JOURNAL_FOLDER)
        state = SearchState.new(requested, tracking_uri, config.tracking.experiment)
        state.save(output_dir)
        return state
    if recorded is None:
        raise ResumeError(f"no search to resume in output_dir={str(output_dir)!r} ({SearchState.path_in(output_dir)} "
                          "is missing); run `cmpnas search` without --resume to start one")
    if recorded.phase not in RESUMABLE_PHASES:
        raise ResumeError(f"the search in {output_dir} has finished (parent run {recorded.parent_run_id}); "
                          "nothing to resume. `cmpnas pareto` shows its front")
    changed = check_resume_config(recorded.config, requested)
    if changed:
        logger.warning("resuming with changed %s", ", ".join(changed))
    recorded.config, recorded.tracking_uri = requested, tracking_uri
    recorded.sessions += 1
    recorded.save(output_dir)
    return recorded


def attach_parent_run(tracker: SearchTracker, state: SearchState, run_name: str, tags: dict[str, str],
                      config: CmpnasConfig, output_dir: Path) -> SearchState:
    """The parent run of this search: found again by the search id it is tagged with (a driver
    killed between creating it and recording its id must not leave a second parent behind)."""
    if state.parent_run_id is None:
        existing = tracker.client.search_runs(
            [tracker.experiment_id], filter_string=f"tags.`{SEARCH_ID_TAG}` = '{state.search_id}'", max_results=1)
        state.parent_run_id = existing[0].info.run_id if existing else tracker.start_parent(run_name, tags=tags)
    derived = tune_experiment_path(config.ray.storage_path or str(output_dir / "ray_results"), state.parent_run_id)
    check_recorded_tune_path(state, derived)
    state.experiment_id = tracker.experiment_id
    state.tune_experiment_path = derived
    if state.phase == "starting":
        state = state.moved_to("running")
    return state


def record_parent_run(ctx: SearchContext) -> None:
    """The parent run's params, config file and paragon metrics; keyed, so a resume does not log them twice."""
    config, inputs, journal = ctx.config, ctx.inputs, ctx.journal
    gallery_spec = inputs.gallery_model.input_spec
    recorded_config = redact_tree(config.model_dump(mode="json"))  # credentials never leave the process
    journal.log_params(PARENT, {
        **config_params(recorded_config), "paragon_flops_skipped_ops": ctx.paragon.cost.skipped_ops,
        "paragon_flops_convention": ctx.paragon.cost.convention,
        # The query models' preprocessing (the data's statistics) and the gallery model's, apart.
        "preprocess_mean": list(inputs.data.mean), "preprocess_std": list(inputs.data.std),
        "gallery_input_size": gallery_spec.size, "gallery_input_channels": gallery_spec.channels,
        "gallery_input_mean": list(gallery_spec.mean), "gallery_input_std": list(gallery_spec.std),
        "gallery_embed_dim": inputs.gallery_model.embed_dim, "gallery_classifier_kind": ctx.embeddings.classifier_kind,
        **data_summary(inputs),
    }, key="parent/params")
    # The splits as MLflow dataset inputs, described, never copied (docs/mlflow.md).
    journal.log_inputs(PARENT, data_split_inputs(inputs.data, config.data.source, config.data.root,
                                                     inputs.held_out_data),
                       key="parent/datasets")
    config_file = ctx.output_dir / "config.json"
    config_file.write_text(json.dumps(recorded_config, indent=2))
    journal.log_artifact(PARENT, config_file, key="parent/config.json")
    gallery_file = ctx.output_dir / GALLERY_IDENTITY_FILE
    gallery_file.write_text(json.dumps(inputs.gallery_model.identity(), indent=2))
    journal.log_artifact(PARENT, gallery_file, key=f"parent/{GALLERY_IDENTITY_FILE}")
    if inputs.data.bad_files:
        bad_file = ctx.output_dir / BAD_FILES_FILE
        with bad_file.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["id", "reason"])
            writer.writerows((item.id, item.reason) for item in inputs.data.bad_files)
        journal.log_artifact(PARENT, bad_file, key=f"parent/{BAD_FILES_FILE}")
    cost = ctx.paragon.cost
    journal.log_metrics(PARENT, {
        **ctx.paragon.metrics,
        "paragon_flops": cost.flops, "paragon_mflops": cost.mflops,
        **({"paragon_params": cost.params} if cost.params else {}),  # unknown where gallery.mflops gives the cost
        "gallery_images_embedded": inputs.images_embedded, "data_bad_files": len(inputs.data.bad_files),
        **inputs.timings,
    }, key="parent/paragon")


def data_summary(inputs: SearchInputs) -> dict:
    """The data's counts as parameters: with a validation split, query/gallery are the held-out splits
    and the validation halves are named apart."""
    summary = inputs.data.summary()
    held_out = inputs.held_out_data
    if held_out is not None:
        summary.update(validation_query_images=summary["query_images"],
                       validation_gallery_images=summary["gallery_images"],
                       query_images=len(held_out.query), gallery_images=len(held_out.gallery))
    return summary


def record_search(ctx: SearchContext) -> tuple[str, ParetoReport, Shortfall | None]:
    """Everything recorded under the parent run; returns its final status, the report and why it
    ended with fewer candidates than asked (``orchestrator.shortfall``), if it did."""
    config = ctx.config
    record_parent_run(ctx)
    if ctx.state.phase == "final_training":  # resumed after its front was recorded
        ctx.journal.log_metrics(PARENT, {"search_sessions": ctx.state.sessions},
                                key=f"parent/sessions/{ctx.state.sessions}")
        report = collect_report(ctx.journal.tracker, ctx.state.parent_run_id, config.search.metric,
                                config.evaluation.compatibility_ratio)
        finish_with_final_training(ctx, report)
        return "FINISHED", report, None
    started = time.perf_counter()
    counter, predictions = FlopsCounter(), {}
    searcher = create_searcher(ctx.inputs.space, config.search, config.search.metric, SEARCH_MODE,
                               flops_constraint(config.search.proposal_limit_mflops, counter),
                               cost=counter, predictions=predictions)
    convergence = SearchConvergenceCallback(ctx.journal.tracker, ctx.journal.parent_run_id, ctx.paragon.cost.mflops,
                                            predictions, metric=config.search.metric, journal=ctx.journal)
    results = run_trials(ctx, searcher, extra_callbacks=[convergence])
    complete = results.num_terminated + results.num_errors == len(results)
    summary = {"stage_trials_seconds": time.perf_counter() - started, "trials_started": len(results),
               "trials_failed": results.num_errors}
    if ctx.state.sessions == 1:  # a restored experiment runs Tune's copy of the searcher, not this one
        summary["strategy_results_observed"] = searcher.observed
        summary["trials_stopped_early"] = convergence.stopped_early
    ctx.state.trial_ids = sorted(tune_trial_id(result) for result in results)
    if complete:
        ctx.journal.log_metrics(PARENT, {**summary, "search_sessions": ctx.state.sessions}, key="parent/summary")
        ctx.state = ctx.state.moved_to("trials_done")
    else:
        ctx.state = ctx.state.moved_to("interrupted")
    ctx.save_state()
    final_training = complete and config.search.final_training.epochs > 0
    report = finalize_search(ctx.journal, ctx.state, ctx.output_dir, ctx.console,
                             outage_wait_s=config.tracking.outage_wait_s, metric=config.search.metric,
                             compatibility_ratio=config.evaluation.compatibility_ratio,
                             next_phase="final_training" if final_training else "finished")
    if final_training:
        ctx.state = SearchState.load(ctx.output_dir)
    if config.search.budgets_mflops:
        picks = best_per_budget(report, config.search.budgets_mflops)
        record_budget_sweep(ctx.journal, picks, ctx.output_dir)
        for pick in picks:
            ctx.console.log(f"budget {pick.budget_mflops:g} MFLOPs ({pick.alias}): "
                            + (f"{pick.best.arch_id}, {pick.best.mflops:.3f} MFLOPs, cross-model mAP "
                               f"{pick.best.cross_map:.2f}" if pick.best else "no finished candidate within it"))
    shortfall = find_shortfall(config.search, complete=complete, trials_started=len(results),
                               trials_failed=results.num_errors, candidates_finished=len(report.candidates))
    if complete:  # an interrupted search is resumed, and judged when its trials have all ended
        record_shortfall(ctx.journal, config.search, shortfall)
    if final_training:
        finish_with_final_training(ctx, report)
    return ("FINISHED" if complete else "KILLED"), report, shortfall


def finish_with_final_training(ctx: SearchContext, report: ParetoReport) -> None:
    """search.final_training after the recorded front, then the search is finished (orchestrator.final_training)."""
    rows = run_final_training(ctx, report)
    render_final_training(rows, report, ctx.console)
    ctx.journal.set_status(PARENT, "FINISHED", key=f"parent/finished/{ctx.state.sessions}")
    ctx.journal.flush()
    ctx.state = ctx.state.moved_to("finished")
    ctx.save_state()
