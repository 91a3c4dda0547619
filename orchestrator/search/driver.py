"""The search driver: one search from its configuration to its Pareto front in MLflow.

Order of work in one search (each stage in its own module):
1. what the configuration alone decides, refused before any work (the strategy's settings,
   ``orchestrator.strategies.feasibility``); the output folder locked; the search state: a new
   search, or the interrupted one recorded in ``output_dir`` (``orchestrator.search.state``);
2. by the recorded phase, its handler (``PHASE_HANDLERS``, one per phase of
   ``orchestrator.search.phases``): a search whose trials had all ended records its front first;
3. data, frozen gallery model and search space (``orchestrator.setup.inputs``), the budgets
   checked against the space, the paragon's cost, the supernet in the inherit modes;
4. Ray (``orchestrator.setup.ray_cluster``), then the gallery's embeddings of every split, once,
   and the paragon measured against itself;
5. the MLflow parent run (``orchestrator.search.parent_run``) and the session's stages under it
   (``orchestrator.search.stages``): candidates as Tune trials, the Pareto front, a budget sweep's
   best candidates, the shortfall, the final training.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import ray
from rich.console import Console

from evaluators.complexity import ComplexityReport
from orchestrator.common.credentials import fields_with_credentials, redact_uri
from orchestrator.common.output_lock import locked_output_dir
from orchestrator.config import CmpnasConfig
from orchestrator.results.front import ParetoReport
from orchestrator.results.front_rendering import render_table
from orchestrator.search.context import SearchContext
from orchestrator.search.parent_run import attach_parent_run, measure_paragon, parent_run_tags
from orchestrator.search.phases import SearchPhase, phase_after_front
from orchestrator.search.records import FrontPlan, record_front, report_unsent_writes
from orchestrator.search.shortfall import Shortfall, find_shortfall, record_shortfall
from orchestrator.search.stages import SessionResult, record_search
from orchestrator.search.space_info import check_budgets_before_set_up
from orchestrator.search.state import (
    ResumeError,
    SearchState,
    check_resumed_supernet,
    forget_unstarted_search,
    open_search_state,
)
from orchestrator.setup.gallery import paragon_cost, paragon_latency_ms
from orchestrator.setup.inputs import PreparedInputs, prepare_search_inputs
from orchestrator.setup.output_dir import prepare_output_dir
from orchestrator.setup.ray_cluster import LOCAL, ResourceRequest, connect_ray, ray_address
from orchestrator.setup.ray_join import check_can_join
from orchestrator.setup.supernet import load_supernet_for_search, require_supernet_checkpoint
from orchestrator.strategies.feasibility import check_search_budgets, check_strategy_settings
from orchestrator.tracking.client import experiment_page_url, resolve_tracking_uri
from orchestrator.tracking.errors import TrackingUnavailableError
from orchestrator.tracking.journal import PARENT
from orchestrator.tracking.session import open_journal, open_tracker
from workers.compatibility.supernet_checkpoint import SupernetCheckpoint

logger = logging.getLogger(__name__)
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


@dataclass(frozen=True)
class SearchSession:
    """One session of a search before its data is loaded: what the driver was asked and where it records."""

    config: CmpnasConfig
    console: Console
    output_dir: Path
    tracking_uri: str


def run_search(config: CmpnasConfig, console: Console | None = None, resume: bool = False,
               lock_wait_s: float = 0.0) -> SearchOutcome:
    """Run a search, or with ``resume`` continue the one recorded in ``output_dir`` (see
    ``orchestrator.search.state``): same MLflow parent run, child runs re-attached by trial id,
    finished trials kept, unfinished ones continued from their last checkpoint. ``lock_wait_s``: how
    long to wait for ``output_dir`` held elsewhere (``orchestrator.common.output_lock``) before refusing."""
    check_strategy_settings(config.search)
    check_budgets_before_set_up(config)  # what the configuration alone decides: before minutes of gallery training
    output_dir = prepare_output_dir(config)
    with locked_output_dir(output_dir, "cmpnas search" + (" --resume" if resume else ""), wait_s=lock_wait_s):
        require_supernet_checkpoint(config)
        warn_of_credentials(config)
        session = SearchSession(config, console or Console(), output_dir, resolve_tracking_uri(config.tracking.uri))
        state = open_search_state(config, output_dir, session.tracking_uri, resume)
        try:
            return PHASE_HANDLERS[state.phase](session, state)
        except BaseException:
            forget_unstarted_search(state, output_dir)
            raise


def warn_of_credentials(config: CmpnasConfig) -> None:
    """Credentials in a URI are used, never recorded (``orchestrator.common.credentials``): say what that means."""
    fields = fields_with_credentials(config.model_dump(mode="json"))
    if fields:
        logger.warning("%s holds credentials: they are used by this process but recorded nowhere (state file, "
                       "MLflow params, logs); a resume or `cmpnas sync` needs them again, best from the environment "
                       "(MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD, AWS_*)", ", ".join(fields))


def _front_first(session: SearchSession, state: SearchState) -> SearchOutcome:
    """Phase ``trials_done``: every trial of the search has ended; its front is recorded first, then,
    with ``search.final_training``, the search goes on to that phase."""
    config, console = session.config, session.console
    next_phase = phase_after_front(config.search.final_training.epochs)
    final_training = next_phase is SearchPhase.FINAL_TRAINING
    console.log("every trial of this search has ended; recording its Pareto front"
                + (" before the final training" if final_training else ""))
    journal = open_journal(open_tracker(session.tracking_uri, state.experiment), state.parent_run_id,
                           session.output_dir)
    # This session records the front (and trains it again); the count of sessions still says it ran.
    journal.log_metrics(PARENT, {"search_sessions": state.sessions}, key=f"parent/sessions/{state.sessions}")
    report = record_front(journal, state, session.output_dir,
                          FrontPlan(config.tracking.outage_wait_s, None, next_phase))
    # The failed trials of the ended session are not known here; missing candidates still count.
    shortfall = find_shortfall(config.search, complete=True, trials_started=len(state.trial_ids), trials_failed=0,
                               candidates_finished=len(report.candidates),
                               compatibility_failed=len(report.compatibility_failures))
    record_shortfall(journal, config.search, shortfall)
    if final_training:  # it needs the data and Ray, set up as for any other session
        return _search(session, SearchState.load(session.output_dir))
    render_table(report, console)
    report_shortfall(shortfall, console)
    return SearchOutcome(state.parent_run_id, report, session.output_dir, 0, shortfall)


def _search(session: SearchSession, state: SearchState) -> SearchOutcome:
    """Phases ``starting``, ``running``, ``interrupted`` and ``final_training``: set up the data,
    gallery and Ray, open the parent run and run the session's stages (``orchestrator.search.stages``)."""
    started = time.perf_counter()
    config, console = session.config, session.console
    preparation = _prepare(session, state)
    with _connected(config) as ray_seconds:
        ctx = _open_context(session, state, preparation, ray_seconds)
        try:
            result = record_search(ctx)
        except TrackingUnavailableError:
            raise  # nothing failed: the records wait in the journal for `cmpnas sync`
        except BaseException:
            ctx.journal.set_status(PARENT, "FAILED")
            ctx.journal.flush()
            raise
        # Tracking time overlaps the other stages (MLflow calls made during them); one row per session.
        ctx.journal.log_metrics(PARENT, {"stage_tracking_seconds": ctx.journal.tracker.seconds_in_calls,
                                         "search_wall_seconds": time.perf_counter() - started},
                                step=ctx.state.sessions - 1, key=f"parent/wall/{ctx.state.sessions}")
        report_unsent_writes(ctx.journal, session.output_dir, console)  # wall time and budget sweep follow the front
    _show_outcome(ctx, result)
    return SearchOutcome(ctx.state.parent_run_id, result.report, session.output_dir, ctx.inputs.images_embedded,
                         result.shortfall)


@dataclass(frozen=True)
class Preparation:
    """What a session has before Ray: its inputs, the paragon's cost and latency, the supernet (inherit modes)."""

    inputs: PreparedInputs
    paragon_cost: ComplexityReport
    supernet: SupernetCheckpoint | None
    paragon_latency_ms: float | None = None


def _prepare(session: SearchSession, state: SearchState) -> Preparation:
    """Data, gallery model and space, and everything checked on them before Ray and the embedding pass."""
    config, log = session.config, session.console.log
    if ray_address(config.ray) != LOCAL:
        check_can_join(ray_address(config.ray))  # before minutes of data and gallery set-up, not after
    prepared = prepare_search_inputs(config, log, expected_gallery_fingerprint=state.gallery_fingerprint,
                                     resumed=state.sessions > 1)
    check_search_budgets(prepared.space, config.search)  # before the parent run: a refusal records nothing
    # Before the embedding pass: a cost that cannot be measured (gallery.mflops unset) is refused first.
    cost = paragon_cost(config, prepared.gallery_model)
    supernet = load_supernet_for_search(config, prepared.space, prepared.gallery_model.fingerprint)
    check_resumed_supernet(state, supernet)
    if supernet is not None:
        log(f"training.mode={config.training.mode}: candidates inherit from supernet {config.supernet_checkpoint_path} "
            f"(fingerprint {supernet.fingerprint[:12]})")
    log_schedule(config, prepared, log)
    return Preparation(prepared, cost, supernet, paragon_latency_ms(config, prepared.gallery_model))


@contextlib.contextmanager
def _connected(config: CmpnasConfig) -> Iterator[float]:
    """Ray for the session's trials (started here, or joined); yields the seconds connecting took."""
    started = time.perf_counter()
    resources = config.resources
    started_ray = connect_ray(config.ray, [ResourceRequest("trials", resources.cpus_per_trial,
                                                           resources.gpus_per_trial, "resources.cpus_per_trial",
                                                           "resources.gpus_per_trial")])
    try:
        yield time.perf_counter() - started
    finally:
        if started_ray:
            ray.shutdown()


def _open_context(session: SearchSession, state: SearchState, preparation: Preparation,
                  ray_seconds: float) -> SearchContext:
    """The gallery embedded and the paragon measured (after Ray: a streamed collection is embedded on
    Ray Data), then the parent run opened and the journal the session writes through."""
    config, log, supernet = session.config, session.console.log, preparation.supernet
    inputs = preparation.inputs.embed_gallery(log)
    inputs = dataclasses.replace(inputs, timings={**inputs.timings, "stage_ray_start_seconds": ray_seconds})
    paragon = measure_paragon(config, inputs, preparation.paragon_cost, preparation.paragon_latency_ms)
    log_paragon(paragon.metrics, config.scoring.measure, inputs.held_out is not None, paragon.cost.mflops, log)
    tracker = open_tracker(session.tracking_uri, config.tracking.experiment)
    state = attach_parent_run(tracker, state, config, parent_run_tags(config, inputs, state), session.output_dir)
    state.gallery_fingerprint = inputs.embeddings.fingerprint
    state.gallery = inputs.gallery_model.identity()
    state.save(session.output_dir)
    journal = open_journal(tracker, state.parent_run_id, session.output_dir)
    if state.sessions > 1:
        journal.set_status(PARENT, "RUNNING")
        log(f"resuming search {state.parent_run_id} (session {state.sessions}); "
            f"{journal.pending} journaled writes still to send")
    log(f"MLflow: experiment '{config.tracking.experiment}', parent run {state.parent_run_id} "
        f"at {redact_uri(tracker.tracking_uri)}")
    return SearchContext(config, inputs, paragon, journal, state, session.output_dir, session.console,
                         supernet_state=supernet.state if supernet is not None else None)


def _show_outcome(ctx: SearchContext, result: SessionResult) -> None:
    render_table(result.report, ctx.console)
    tracker = ctx.journal.tracker
    ctx.console.print(f"Pareto table: {ctx.output_dir / 'pareto.csv'}; plot: {ctx.output_dir / 'pareto.png'}; "
                      + ui_hint(redact_uri(tracker.tracking_uri), tracker.experiment_id), highlight=False)
    report_shortfall(result.shortfall, ctx.console, result.status)


def _finished(session: SearchSession, state: SearchState) -> SearchOutcome:
    """Phase ``finished``: nothing to run (``open_search_state`` refuses to resume it first)."""
    raise ResumeError(f"the search in {session.output_dir} has finished (parent run {state.parent_run_id}); "
                      "nothing to resume. `cmpnas pareto` shows its front")


# What a session does, by the phase the search is recorded in (orchestrator.search.phases).
PHASE_HANDLERS: dict[SearchPhase, Callable[[SearchSession, SearchState], SearchOutcome]] = {
    SearchPhase.STARTING: _search,
    SearchPhase.RUNNING: _search,
    SearchPhase.INTERRUPTED: _search,
    SearchPhase.TRIALS_DONE: _front_first,
    SearchPhase.FINAL_TRAINING: _search,
    SearchPhase.FINISHED: _finished,
}


def log_paragon(metrics: dict[str, float], measure: str, held_out: bool, mflops: float, log) -> None:
    """The paragon's R@1, mAP and searched measure (on the validation split, and held out, when there is one)."""
    extra = {prefix: f", {measure} {metrics[prefix + measure]:.2f}" if prefix + measure in metrics else ""
             for prefix in ("paragon_", "paragon_heldout_")}  # none for a label-free measure (agreement)
    log(f"paragon{' (validation split)' * held_out}: R@1 {metrics['paragon_r1']:.2f}, mAP {metrics['paragon_map']:.2f}"
        f"{extra['paragon_']}, {mflops:.1f} MFLOPs")
    if held_out:
        log(f"paragon (held out): R@1 {metrics['paragon_heldout_r1']:.2f}, mAP {metrics['paragon_heldout_map']:.2f}"
            f"{extra['paragon_heldout_']}")


def log_schedule(config: CmpnasConfig, prepared: PreparedInputs, log) -> None:
    """Say when ``training.min_steps`` raises the candidates' epochs (a small train split)."""
    training, train_images = config.training, len(prepared.data.train)
    epochs = training.epochs_for(train_images)
    if epochs != training.trial_epochs:
        steps = epochs * -(-train_images // training.batch_size)
        log(f"training.min_steps={training.min_steps}: candidates train {epochs} epochs instead of "
            f"{training.trial_epochs} on {train_images} training images ({steps} optimizer steps)")


def ui_hint(tracking_uri: str, experiment_id: str) -> str:
    """Where to see the runs: the server's page, or `mlflow ui` on a local store, opened on the runs
    table (MLflow 3 otherwise opens its GenAI overview in a fresh browser, docs/mlflow.md)."""
    if tracking_uri.startswith(("http://", "https://")):
        return f"runs: {experiment_page_url(tracking_uri, experiment_id)}"
    return (f"open the runs with `mlflow ui --backend-store-uri {tracking_uri}`, then "
            f"{experiment_page_url('http://127.0.0.1:5000', experiment_id)}")


def report_shortfall(shortfall: Shortfall | None, console: Console, status: str = "FINISHED") -> None:
    if shortfall is not None:
        console.print(f"[bold yellow]the search ended short (parent run {status}): {shortfall.reason}[/]; "
                      f"{shortfall.fix}", highlight=False)
