"""`cmpnas supernet train`: the supernet trained once, as a one-trial Ray Tune job, tracked in MLflow.

Order of work: data, frozen gallery model (loaded, or trained on first use) and its embeddings,
as for a search; then one Tune trial with ``supernet.cpus``/``supernet.gpus`` (so on a cluster it
lands on a node that has a GPU, and on a laptop it runs on the CPU), which reports losses every
epoch. An MLflow run (role ``supernet``) gets the configuration, the per-epoch curves, the
training time and the final checkpoint, which is also copied to ``supernet.checkpoint``.
"""

from __future__ import annotations

import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import ray
from ray import tune
from rich.console import Console

from orchestrator.common.credentials import redact_text, redact_uri
from orchestrator.common.output_lock import locked_output_dir
from orchestrator.common.version import cmpnas_version
from orchestrator.config import CmpnasConfig
from orchestrator.setup.inputs import SearchInputs, prepare_search_inputs
from orchestrator.setup.output_dir import prepare_output_dir
from orchestrator.setup.ray_cluster import ResourceRequest, connect_ray
from orchestrator.setup.tune_experiment import TuneExperiment, create_tuner
from orchestrator.tracking.client import SearchTracker, config_params, resolve_tracking_uri
from orchestrator.tracking.tags import (
    DATASET_TAG,
    ERROR_TAG,
    GALLERY_FINGERPRINT_TAG,
    ROLE_SUPERNET,
    ROLE_TAG,
    SEARCH_SPACE_TAG,
    SUPERNET_FINGERPRINT_TAG,
    VERSION_TAG,
)
from search_space.errors import CmpnasError
from workers.compatibility.supernet import SupernetTrainingSettings
from workers.compatibility.supernet_checkpoint import load_supernet
from workers.compatibility.training import CompatibilityTrainingSettings
from workers.storage.durable_write import replaced_durably
from workers.supernet_trial import SUPERNET_FILE, SharedSupernetInputs, run_supernet_training
from workers.training.batches import AugmentationSettings
from workers.training.fit import OptimSettings

# Logged on every epoch of the supernet run.
SUPERNET_EPOCH_METRICS = ("loss", "largest_loss_own_classifier", "largest_loss_bct_influence",
                          "largest_loss_cosine_alignment", "smallest_loss_own_classifier",
                          "smallest_loss_bct_influence", "smallest_loss_cosine_alignment", "loss_distillation",
                          "images_per_second", "epoch_seconds", "train_seconds", "cpu_seconds")


@dataclass(frozen=True)
class SupernetOutcome:
    path: Path
    fingerprint: str
    run_id: str
    history: list[dict]
    train_seconds: float
    cpu_seconds: float


class SupernetTrainingError(CmpnasError, RuntimeError):
    """The supernet training trial failed; the MLflow run holds its error."""


class SupernetProgressCallback(tune.Callback):
    """One log line and one MLflow step per supernet epoch."""

    def __init__(self, tracker: SearchTracker, run_id: str, console: Console, epochs: int):
        self.tracker, self.run_id, self.console, self.epochs = tracker, run_id, console, epochs

    # Tune pickles its callbacks with the experiment state; a terminal handle cannot travel.
    def __getstate__(self) -> dict:
        return {**self.__dict__, "console": None}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.console = Console()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        epoch = int(result["epoch"])
        self.console.log(f"supernet epoch {epoch}/{self.epochs}: loss {result['loss']:.4f} "
                         f"(largest {_part(result, 'largest')}, smallest {_part(result, 'smallest')}), "
                         f"{result['images_per_second']:.0f} images/s, {result['epoch_seconds']:.0f}s")
        try:
            self.tracker.log_metrics(self.run_id, {k: result[k] for k in SUPERNET_EPOCH_METRICS if k in result},
                                     step=epoch)
        except Exception as error:  # noqa: BLE001 - tracking must not fail the training
            self.console.log(f"MLflow logging failed ({redact_text(str(error))}); training goes on")


def _part(result: dict, end: str) -> str:
    parts = [f"{name.removeprefix(end + '_loss_')} {value:.3f}" for name, value in result.items()
             if name.startswith(f"{end}_loss_")]
    return ", ".join(parts) or "-"


def supernet_training_settings(config: CmpnasConfig, augmentation: AugmentationSettings | None = None
                               ) -> SupernetTrainingSettings:
    supernet, training = config.supernet, config.training
    return SupernetTrainingSettings(
        compatibility=CompatibilityTrainingSettings(
            optim=OptimSettings(epochs=supernet.epochs, batch_size=supernet.batch_size, lr=supernet.lr,
                                weight_decay=supernet.weight_decay, seed=config.search.seed),
            loss_weights=dict(training.loss_weights),
            loss_parameters={name: dict(values) for name, values in training.loss_parameters.items()},
            channels_last=training.channels_last,
            mixed_precision=training.mixed_precision,
            augmentation=augmentation,
            unlabelled_weight=training.unlabelled_weight,
            unlabelled_batch_size=training.unlabelled_batch_size,
        ),
        num_random_subnets=supernet.num_random_subnets,
        distillation_weight=supernet.distillation_weight if supernet.distillation else 0.0,
    )


def supernet_resources(config: CmpnasConfig) -> ResourceRequest:
    return ResourceRequest("the supernet training", config.supernet.cpus, config.supernet.gpus,
                           "supernet.cpus", "supernet.gpus")


def train_supernet_job(config: CmpnasConfig, console: Console | None = None) -> SupernetOutcome:
    console = console or Console()
    output_dir = prepare_output_dir(config)
    with locked_output_dir(output_dir, "cmpnas supernet train"):
        return _train_supernet(config, console, output_dir)


def _train_supernet(config: CmpnasConfig, console: Console, output_dir: Path) -> SupernetOutcome:
    log = console.log
    prepared = prepare_search_inputs(config, log)
    settings = supernet_training_settings(config, prepared.augmentation)
    started_ray = connect_ray(config.ray, [supernet_resources(config)])
    try:
        inputs = prepared.embed_gallery(log)  # on Ray Data for a streamed collection, hence after connecting
        tracker = SearchTracker(resolve_tracking_uri(config.tracking.uri), config.tracking.experiment)
        run_id = _start_supernet_run(config, inputs, tracker)
        optim = settings.compatibility.optim
        log(f"training the supernet of '{inputs.space.name}' for {optim.epochs} epochs "
            f"(largest + smallest + {settings.num_random_subnets} random subnets per step, distillation weight "
            f"{settings.distillation_weight:g}); MLflow run {run_id} at {redact_uri(tracker.tracking_uri)}")
        try:
            outcome = _fit_and_save(config, SupernetTraining(inputs, settings, output_dir),
                                    SupernetRecord(tracker, run_id, console))
        except BaseException:
            tracker.end_run(run_id, "FAILED")
            raise
        tracker.end_run(run_id, "FINISHED")
    finally:
        if started_ray:
            ray.shutdown()
    console.print(f"supernet checkpoint {outcome.path} (fingerprint {outcome.fingerprint[:12]}), "
                  f"{outcome.train_seconds:.0f}s, {outcome.cpu_seconds:.0f} CPU-seconds")
    return outcome


def _start_supernet_run(config: CmpnasConfig, inputs: SearchInputs, tracker: SearchTracker) -> str:
    """The MLflow run of this supernet training (role ``supernet``), with its settings as params."""
    data, space = inputs.data, inputs.space
    run = tracker.client.create_run(
        tracker.experiment_id, run_name=f"supernet-{space.name}-{time.strftime('%Y%m%d-%H%M%S')}",
        tags={ROLE_TAG: ROLE_SUPERNET, GALLERY_FINGERPRINT_TAG: inputs.embeddings.fingerprint,
              VERSION_TAG: cmpnas_version(), DATASET_TAG: data.name, SEARCH_SPACE_TAG: space.name},
    )
    run_id = run.info.run_id
    tracker.log_params(run_id, {**config_params({"supernet": config.supernet.model_dump(mode="json")}),
                                "training.loss_weights": dict(config.training.loss_weights),
                                "training.loss_parameters": dict(config.training.loss_parameters),
                                "search_space.name": space.name, "seed": config.search.seed, **data.summary()})
    return run_id


@dataclass(frozen=True)
class SupernetTraining:
    """What the supernet trains on and with, and the output folder of the job."""

    inputs: SearchInputs
    settings: SupernetTrainingSettings
    output_dir: Path


@dataclass(frozen=True)
class SupernetRecord:
    """Where the supernet training is recorded: its MLflow run, and the terminal."""

    tracker: SearchTracker
    run_id: str
    console: Console


def _fit_and_save(config: CmpnasConfig, training: SupernetTraining, record: SupernetRecord) -> SupernetOutcome:
    """One Tune trial trains the supernet; its checkpoint is copied to ``supernet.checkpoint`` and logged."""
    inputs, settings, tracker, run_id = training.inputs, training.settings, record.tracker, record.run_id
    shared = SharedSupernetInputs(data=inputs.data, gallery=inputs.embeddings, space_name=inputs.space.name,
                                  training=settings, threads=max(1, math.ceil(config.supernet.cpus)),
                                  gallery_loader=inputs.prepared.gallery_loader
                                  if settings.compatibility.augmentation is not None else None)
    trainable = tune.with_resources(tune.with_parameters(run_supernet_training, shared=shared),
                                    {"cpu": config.supernet.cpus, "gpu": config.supernet.gpus})
    storage_path = config.ray.storage_path or str(training.output_dir / "ray_results")
    # Two checkpoints kept: a resume restores the one Tune's (slightly lagging) snapshot names, which may be
    # the one before the newest (see orchestrator.search.trials).
    experiment = TuneExperiment(f"{storage_path.rstrip('/')}/supernet-{run_id[:8]}",
                                callbacks=[SupernetProgressCallback(tracker, run_id, record.console,
                                                                    settings.compatibility.optim.epochs)],
                                max_failures=config.resources.max_failures, checkpoints_kept=2)
    result = create_tuner(trainable, experiment).fit()[0]
    if result.error is not None or result.checkpoint is None:
        error = redact_text(str(result.error))
        tracker.set_tag(run_id, ERROR_TAG, error[-5000:])
        raise SupernetTrainingError(f"supernet training failed: {error}")
    path = config.supernet_checkpoint_path
    path.parent.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as folder:
        with replaced_durably(path) as temporary:
            shutil.copyfile(Path(folder) / SUPERNET_FILE, temporary)
    checkpoint = load_supernet(path)
    history = [row for row in result.metrics_dataframe.to_dict("records")] if result.metrics_dataframe is not None else []
    final = result.metrics
    tracker.log_metrics(run_id, {"supernet_train_seconds": final["train_seconds"],
                                 "supernet_cpu_seconds": final["cpu_seconds"], "epochs": final["epoch"]})
    tracker.set_tag(run_id, SUPERNET_FINGERPRINT_TAG, checkpoint.fingerprint)
    tracker.log_artifact(run_id, path, "supernet")
    return SupernetOutcome(path, checkpoint.fingerprint, run_id, history, final["train_seconds"], final["cpu_seconds"])
