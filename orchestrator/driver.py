"""The search driver: data and gallery once, candidates through Ray Tune, results into MLflow.

Order of work in one search:
1. load the data and obtain the frozen gallery model (load, or train on first use);
2. embed the train, query and gallery splits with the gallery model, once;
3. open the MLflow parent run (config, paragon metrics and FLOPs, gallery fingerprint);
4. run the candidates as Tune trials (the shared inputs travel once through the object store);
5. read the finished child runs back, select the Pareto front, tag it, log table and plot.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import ray
from ray import tune
from rich.console import Console

from evaluators import FLOPS_CONVENTION, count_complexity, create_task
from orchestrator.budget_report import best_per_budget, record_budget_sweep
from orchestrator.config import CmpnasConfig
from orchestrator.convergence import SearchConvergenceCallback
from orchestrator.early_stopping import create_scheduler
from orchestrator.gallery_setup import obtain_gallery
from orchestrator.journal import (
    JOURNAL_FOLDER,
    PARENT,
    TrackingJournal,
    TrackingUnavailableError,
    is_transient,
    retire_journal,
    unsent_writes,
)
from orchestrator.pareto_report import ParetoReport, collect_report, render_table, tag_front, write_csv, write_plot
from orchestrator.progress import RichProgressCallback
from orchestrator.search_state import RESUMABLE_PHASES, ResumeError, SearchState, check_resume_config
from orchestrator.strategies import create_searcher
from orchestrator.supernet_setup import load_supernet_for_search, require_supernet_checkpoint
from orchestrator.strategies.cost import FlopsCounter, WithinBudget
from orchestrator.tracking import TRIAL_ID_TAG, MlflowTrialCallback, SearchTracker, flatten, resolve_tracking_uri
from search_space import SearchSpace, create_space
from workers.candidate_training import CandidateTrainingSettings
from workers.checkpoint import CheckpointError
from workers.datasets import DataRequest, RetrievalData, load_retrieval_data
from workers.fit import OptimSettings
from workers.gallery_embeddings import compute_gallery_embeddings
from workers.preprocess import pick_device
from workers.trial import SharedTrialInputs, run_candidate_trial

logger = logging.getLogger(__name__)
# The metric is config.search.metric; every metric a task reports (evaluators.tasks) is maximised.
SEARCH_MODE = "max"
SEARCH_ID_TAG = "cmpnas.search_id"
SUPERSEDED_TAG = "cmpnas.superseded"
# Every epoch reports a checkpoint, so Tune snapshots its state often; the snapshots are small
# here and its "snapshotting too often" warning would flood the terminal.
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")


class OutputDirError(RuntimeError):
    """The output directory cannot be created or written."""


@dataclass(frozen=True)
class SearchOutcome:
    parent_run_id: str
    report: ParetoReport
    output_dir: Path
    gallery_images_embedded: int


def cmpnas_version() -> str:
    try:
        return version("cmpnas")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return "0+unknown"


def prepare_output_dir(config: CmpnasConfig) -> Path:
    folder = Path(config.output_dir).resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".cmpnas-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise OutputDirError(f"output_dir={config.output_dir!r} is not writable ({error}); choose another folder") from error
    return folder


def load_data(config: CmpnasConfig) -> RetrievalData:
    data = config.data
    request = DataRequest(root=data.root, download=data.download, train_size=data.train_size,
                          query_size=data.query_size, gallery_size=data.gallery_size, seed=data.seed,
                          image_size=data.image_size, channels=data.channels)
    return load_retrieval_data(data.source, request)


def flops_constraint(space: SearchSpace, max_mflops: float | None, counter: FlopsCounter | None = None):
    """A predicate for proposals, or None; FLOPs measured with fvcore on the built candidate."""
    if max_mflops is None:
        return None
    return WithinBudget(counter or FlopsCounter(), max_mflops)


def run_search(config: CmpnasConfig, console: Console | None = None, resume: bool = False) -> SearchOutcome:
    """Run a search, or with ``resume`` continue the one recorded in ``output_dir`` (see
    ``orchestrator.search_state``): same MLflow parent run, child runs re-attached by trial id,
    finished trials kept, unfinished ones continued from their last checkpoint."""
    console = console or Console()
    log = console.log
    output_dir = prepare_output_dir(config)
    require_supernet_checkpoint(config)
    tracking_uri = resolve_tracking_uri(config.tracking.uri)
    state = open_search_state(config, output_dir, tracking_uri, resume)
    if state.phase == "trials_done":
        log("every trial of this search has ended; recording its Pareto front")
        tracker = open_tracker(tracking_uri, state.experiment)
        journal = open_journal(tracker, state, output_dir)
        report = finalize_search(tracker, journal, state, output_dir, config.tracking.outage_wait_s, console,
                                 config.search.metric)
        return SearchOutcome(state.parent_run_id, report, output_dir, 0)
    timings: dict[str, float] = {}
    search_started = time.perf_counter()

    started = time.perf_counter()
    data = load_data(config)
    timings["stage_data_seconds"] = time.perf_counter() - started
    log(f"data: {data.summary()}")

    device = pick_device()
    started = time.perf_counter()
    gallery_checkpoint = obtain_gallery(config, data, device, log)
    timings["stage_gallery_model_seconds"] = time.perf_counter() - started
    if state.gallery_fingerprint and gallery_checkpoint.fingerprint != state.gallery_fingerprint:
        raise CheckpointError(
            f"gallery checkpoint {config.gallery_checkpoint_path} (fingerprint {gallery_checkpoint.fingerprint[:12]}) "
            f"is not the one this search started with ({state.gallery_fingerprint[:12]}): candidates trained "
            "against another gallery are not comparable. Restore that checkpoint (gallery.checkpoint) to resume"
        )
    space = create_space(config.search_space.name, embed_dim=gallery_checkpoint.model.arch.embed_dim,
                         in_chans=data.in_chans)
    supernet = load_supernet_for_search(config, space, gallery_checkpoint.fingerprint)
    if supernet is not None:
        log(f"training.mode={config.training.mode}: candidates inherit from supernet {config.supernet_checkpoint_path} "
            f"(fingerprint {supernet.fingerprint[:12]})")

    gallery = compute_gallery_embeddings(gallery_checkpoint, data, device)
    timings["stage_gallery_embedding_seconds"] = gallery.seconds
    log(f"gallery model embedded {gallery.images_embedded} images once for the whole search ({gallery.seconds:.1f}s)")
    paragon_metrics = create_task(config.evaluation.task).evaluate(gallery.query, data.query.labels, gallery.gallery,
                                                                   data.gallery.labels, "paragon")
    paragon_cost = count_complexity(gallery_checkpoint.model, (data.in_chans, data.image_size, data.image_size))
    gallery_checkpoint.model.to("cpu")
    searched = config.search.metric.removeprefix("cross_")
    log(f"paragon: R@1 {paragon_metrics['paragon_r1']:.2f}, mAP {paragon_metrics['paragon_map']:.2f}, "
        f"{searched} {paragon_metrics['paragon_' + searched]:.2f}, {paragon_cost.mflops:.1f} MFLOPs")

    started = time.perf_counter()
    started_ray = connect_ray(config)
    timings["stage_ray_start_seconds"] = time.perf_counter() - started
    try:
        tracker = open_tracker(tracking_uri, config.tracking.experiment)
        run_name = config.tracking.run_name or f"search-{time.strftime('%Y%m%d-%H%M%S')}"
        tags = {"gallery_fingerprint": gallery.fingerprint, "cmpnas_version": cmpnas_version(),
                "flops_convention": FLOPS_CONVENTION, "dataset": data.name,
                "gallery_backbone": gallery_checkpoint.model.arch.backbone, "training_mode": config.training.mode,
                **({"supernet_fingerprint": supernet.fingerprint} if supernet is not None else {}),
                SEARCH_ID_TAG: state.search_id}
        state = attach_parent_run(tracker, state, run_name, tags, config, output_dir)
        state.gallery_fingerprint = gallery.fingerprint
        state.save(output_dir)
        parent_run_id = state.parent_run_id
        journal = open_journal(tracker, state, output_dir)
        if state.sessions > 1:
            journal.set_status(PARENT, "RUNNING")
            log(f"resuming search {parent_run_id} (session {state.sessions}); "
                f"{journal.pending} journaled writes still to send")
        log(f"MLflow: experiment '{config.tracking.experiment}', parent run {parent_run_id} at {tracker.tracking_uri}")
        try:
            status, report = _track_search(config, space, data, gallery, gallery_checkpoint, paragon_metrics,
                                           paragon_cost, timings, tracker, journal, state, output_dir, console,
                                           supernet_state=supernet.state if supernet is not None else None)
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
        journal.flush()
    finally:
        if started_ray:
            ray.shutdown()
    render_table(report, console)
    if status != "FINISHED":
        console.print(f"[bold yellow]the search stopped before all candidates finished (parent run {status}); "
                      "continue it with `cmpnas search --resume`[/]")
    console.print(f"Pareto table: {output_dir / 'pareto.csv'}; plot: {output_dir / 'pareto.png'}; "
                  f"open the runs with `mlflow ui --backend-store-uri {tracker.tracking_uri}`")
    return SearchOutcome(parent_run_id, report, output_dir, gallery.images_embedded)


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


def open_tracker(tracking_uri: str, experiment: str) -> SearchTracker:
    try:
        return SearchTracker(tracking_uri, experiment)
    except Exception as error:  # classified: only an outage becomes a user-facing error
        if is_transient(error):
            raise TrackingUnavailableError(
                f"the tracking server at {tracking_uri} cannot be reached ({str(error).splitlines()[0][:300]}); "
                "nothing was recorded. Start it (or set tracking.uri) and run the command again"
            ) from error
        raise


def open_journal(tracker: SearchTracker, state: SearchState, output_dir: Path) -> TrackingJournal:
    return TrackingJournal.open(tracker, state.parent_run_id, output_dir / JOURNAL_FOLDER)


def attach_parent_run(tracker: SearchTracker, state: SearchState, run_name: str, tags: dict[str, str],
                      config: CmpnasConfig, output_dir: Path) -> SearchState:
    """The parent run of this search: found again by the search id it is tagged with (a driver
    killed between creating it and recording its id must not leave a second parent behind)."""
    if state.parent_run_id is None:
        existing = tracker.client.search_runs(
            [tracker.experiment_id], filter_string=f"tags.`{SEARCH_ID_TAG}` = '{state.search_id}'", max_results=1)
        state.parent_run_id = existing[0].info.run_id if existing else tracker.start_parent(run_name, tags=tags)
    storage = config.ray.storage_path or str(output_dir / "ray_results")
    state.experiment_id = tracker.experiment_id
    state.tune_experiment_path = state.tune_experiment_path or f"{storage.rstrip('/')}/search-{state.parent_run_id[:8]}"
    if state.phase == "starting":
        state = state.moved_to("running")
    return state


def _track_search(config, space, data, gallery, gallery_checkpoint, paragon_metrics, paragon_cost, timings,
                  tracker, journal, state, output_dir, console, supernet_state=None) -> tuple[str, ParetoReport]:
    """Everything recorded under the parent run; returns its final status and the report.

    Each record has a journal key, so a resumed search does not log it twice.
    """
    journal.log_params(PARENT, {
        **flatten(config.model_dump(mode="json")), "paragon_flops_skipped_ops": paragon_cost.skipped_ops,
        "preprocess_mean": list(gallery_checkpoint.mean), "preprocess_std": list(gallery_checkpoint.std),
        **data.summary(),
    }, key="parent/params")
    config_file = output_dir / "config.json"
    config_file.write_text(json.dumps(config.model_dump(mode="json"), indent=2))
    journal.log_artifact(PARENT, config_file, key="parent/config.json")
    journal.log_metrics(PARENT, {
        **paragon_metrics,
        "paragon_flops": paragon_cost.flops, "paragon_mflops": paragon_cost.mflops,
        "paragon_params": paragon_cost.params, "gallery_images_embedded": gallery.images_embedded, **timings,
    }, key="parent/paragon")

    started = time.perf_counter()
    counter, predictions = FlopsCounter(), {}
    searcher = create_searcher(space, config.search, config.search.metric, SEARCH_MODE,
                               flops_constraint(space, config.search.proposal_limit_mflops, counter),
                               cost=counter, predictions=predictions)
    convergence = SearchConvergenceCallback(tracker, state.parent_run_id, paragon_cost.mflops, predictions,
                                            metric=config.search.metric)
    results = _run_trials(config, data, gallery, paragon_cost.flops, searcher, journal, state, console,
                          supernet_state, extra_callbacks=[convergence])
    complete = results.num_terminated + results.num_errors == len(results)
    summary = {"stage_trials_seconds": time.perf_counter() - started, "trials_started": len(results),
               "trials_failed": results.num_errors}
    if state.sessions == 1:  # a restored experiment runs Tune's copy of the searcher, not this one
        summary["strategy_results_observed"] = searcher.observed
        summary["trials_stopped_early"] = convergence.stopped_early
    state.trial_ids = sorted(_trial_id(result) for result in results)
    if complete:
        journal.log_metrics(PARENT, {**summary, "search_sessions": state.sessions}, key="parent/summary")
        state = state.moved_to("trials_done")
    else:
        state = state.moved_to("interrupted")
    state.save(output_dir)
    report = finalize_search(tracker, journal, state, output_dir, config.tracking.outage_wait_s, console,
                             config.search.metric)
    if config.search.budgets_mflops:
        picks = best_per_budget(report, config.search.budgets_mflops)
        record_budget_sweep(tracker, state.parent_run_id, picks, output_dir)
        for pick in picks:
            console.log(f"budget {pick.budget_mflops:g} MFLOPs ({pick.alias}): "
                        + (f"{pick.best.arch_id}, {pick.best.mflops:.3f} MFLOPs, cross-model mAP "
                           f"{pick.best.cross_map:.2f}" if pick.best else "no finished candidate within it"))
    return ("FINISHED" if complete else "KILLED"), report


def _can_restore(experiment_path: str) -> bool:
    """Tune can continue the experiment: its tuner and (for a local folder) a snapshot of its trials
    exist. A driver killed before Tune's first snapshot leaves only the tuner: start it again."""
    if not tune.Tuner.can_restore(experiment_path):
        return False
    local = Path(experiment_path)
    return "://" in experiment_path or any(local.glob("experiment_state-*.json"))


def _trial_id(result) -> str:
    return Path(result.path).name.removeprefix("trial_")


def finalize_search(tracker: SearchTracker, journal: TrackingJournal, state: SearchState, output_dir: Path,
                    outage_wait_s: float, console: Console, metric: str = "cross_map") -> ParetoReport:
    """Send what is journaled, then select and record the Pareto front from MLflow.

    Needs the tracking server: if it stays unreachable for ``outage_wait_s`` the records stay in
    the journal and ``TrackingUnavailableError`` says to run ``cmpnas sync`` later.
    """
    complete = state.phase == "trials_done"

    def unavailable(error: BaseException | None = None) -> TrackingUnavailableError:
        cause = f" ({str(error).splitlines()[0][:300]})" if error else ""
        return TrackingUnavailableError(
            f"the tracking server at {tracker.tracking_uri} is unreachable{cause}; every result is kept: "
            f"{journal.pending} writes in {journal.path}. When the server is back run "
            f"`cmpnas sync --output-dir {output_dir}`" + ("" if complete else " or `cmpnas search --resume`")
        )

    if not journal.drain(outage_wait_s):
        raise unavailable()
    try:
        started = time.perf_counter()
        _supersede_orphan_runs(tracker, journal, state)
        report = collect_report(tracker, state.parent_run_id, metric)
        tag_front(tracker, report)
        for path in (write_csv(report, output_dir / "pareto.csv"), write_plot(report, output_dir / "pareto.png")):
            journal.log_artifact(PARENT, path)
        if complete:
            journal.log_metrics(PARENT, {
                "stage_pareto_seconds": time.perf_counter() - started,
                "candidates_finished": len(report.candidates), "pareto_size": len(report.front),
            }, key="parent/pareto")
        journal.set_status(PARENT, "FINISHED" if complete else "KILLED")
    except Exception as error:
        if is_transient(error):
            raise unavailable(error) from error
        raise
    if not journal.drain(outage_wait_s):
        raise unavailable()
    if complete:
        state = state.moved_to("finished")
        state.save(output_dir)
    return report


def _supersede_orphan_runs(tracker: SearchTracker, journal: TrackingJournal, state: SearchState) -> None:
    """A driver killed after a trial's child run was created but before Tune recorded the trial
    leaves a run that no trial will finish: mark it, so runs and trials correspond one to one."""
    if not state.trial_ids:
        return
    known = set(state.trial_ids)
    for run in tracker.child_runs(state.parent_run_id):
        trial_id = run.data.tags.get(TRIAL_ID_TAG)
        if trial_id not in known and run.data.tags.get(SUPERSEDED_TAG) != "true":
            tracker.set_tag(run.info.run_id, SUPERSEDED_TAG, "true")
            if run.info.status == "RUNNING":
                tracker.end_run(run.info.run_id, "KILLED")


def connect_ray(config: CmpnasConfig) -> bool:
    """Start a local Ray (or join ``ray.address``) and check a trial fits on some node.

    Returns whether this call started Ray, i.e. whether the caller must shut it down.
    """
    started = not ray.is_initialized()
    if started:
        joining = config.ray.address is not None
        ray.init(address=config.ray.address, num_cpus=None if joining else config.ray.num_cpus,
                 runtime_env=code_runtime_env() if joining and config.ray.ship_code else None,
                 include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        check_trial_fits(config.resources, strict=config.ray.address is None)
    except ResourceRequestError:
        if started:
            ray.shutdown()
        raise
    return started


def code_runtime_env() -> dict:
    """cmpnas's own packages, uploaded by Ray to every node of a joined cluster (its dependencies
    come with the node image, as with any Ray job)."""
    import evaluators
    import orchestrator
    import search_space
    import workers

    return {"py_modules": [str(Path(package.__file__).parent) for package in (orchestrator, workers, search_space,
                                                                               evaluators)]}


class ResourceRequestError(RuntimeError):
    """A trial asks for more than any node of the Ray cluster has: it would wait forever."""


def check_trial_fits(resources, strict: bool = True) -> None:
    """Refuse a trial no node can hold; on a joined cluster (which may autoscale) only warn."""
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    for field, key, wanted in (("resources.cpus_per_trial", "CPU", resources.cpus_per_trial),
                               ("resources.gpus_per_trial", "GPU", resources.gpus_per_trial)):
        largest = max((node.get(key, 0.0) for node in nodes), default=0.0)
        if wanted > largest:
            message = (f"{field}={wanted} but the largest node of the Ray cluster has {largest:g} {key}s: trials "
                       f"would never start; lower {field}"
                       + (" (no GPU is visible to Ray here)" if key == "GPU" and not largest else ""))
            if strict:
                raise ResourceRequestError(message)
            logger.warning("%s (unless the cluster autoscales)", message)


def _run_trials(config, data, gallery, paragon_flops, searcher, journal, state, console, supernet_state=None,
                extra_callbacks=()):
    resources = config.resources
    shared = SharedTrialInputs(
        data=data,
        gallery=gallery,
        training=CandidateTrainingSettings(
            optim=OptimSettings(epochs=config.training.trial_epochs, batch_size=config.training.batch_size,
                                lr=config.training.lr, weight_decay=config.training.weight_decay,
                                seed=config.search.seed),
            loss_weights=dict(config.training.loss_weights),
            channels_last=config.training.channels_last,
            mixed_precision=config.training.mixed_precision,
        ),
        paragon_flops=paragon_flops,
        threads_per_trial=max(1, math.ceil(resources.cpus_per_trial)),
        measure_latency=resources.measure_latency,
        mode=config.training.mode,
        supernet_state=supernet_state,
        calibration_images=config.supernet.calibration_images,
        task=config.evaluation.task,
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_candidate_trial, shared=shared),
        {"cpu": resources.cpus_per_trial, "gpu": resources.gpus_per_trial},
    )
    experiment_path = state.tune_experiment_path
    if state.sessions > 1 and _can_restore(experiment_path):
        # Finished trials stay finished, unfinished ones continue from their last checkpoint, and
        # the searcher continues from its saved state; trials that exhausted their retries stay failed.
        tuner = tune.Tuner.restore(experiment_path, trainable=trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
        return tuner.fit()
    storage_path, _, name = experiment_path.rpartition("/")
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            metric=config.search.metric, mode=SEARCH_MODE, search_alg=searcher,
            scheduler=create_scheduler(config.search, max(1, config.training.trial_epochs)),
            num_samples=config.search.num_candidates, max_concurrent_trials=config.search.max_concurrent,
            trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}",
            # A fresh actor per trial re-imports torch and re-fetches the shared inputs: 8-14 s of
            # idle slot per trial on a 2-core machine, the main loss of orchestration efficiency.
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=storage_path,
            callbacks=[
                MlflowTrialCallback(journal.tracker, journal.parent_run_id, journal),
                RichProgressCallback(console, config.search.num_candidates, config.training.trial_epochs),
                *extra_callbacks,
            ],
            failure_config=tune.FailureConfig(max_failures=resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )
    return tuner.fit()
