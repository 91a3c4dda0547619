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

from orchestrator.config import CmpnasConfig
from orchestrator.driver import ResourceRequestError, cmpnas_version, connect_ray, load_data, prepare_output_dir
from orchestrator.gallery_setup import obtain_gallery
from orchestrator.tracking import ROLE_TAG, SearchTracker, flatten, resolve_tracking_uri
from search_space import create_space
from workers.fit import OptimSettings
from workers.gallery_embeddings import compute_gallery_embeddings
from workers.preprocess import pick_device
from workers.supernet_checkpoint import load_supernet
from workers.supernet_training import SupernetTrainingSettings
from workers.supernet_trial import SUPERNET_FILE, SharedSupernetInputs, run_supernet_training

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


class SupernetTrainingError(RuntimeError):
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
            self.console.log(f"MLflow logging failed ({error}); training goes on")


def _part(result: dict, end: str) -> str:
    parts = [f"{name.removeprefix(end + '_loss_')} {value:.3f}" for name, value in result.items()
             if name.startswith(f"{end}_loss_")]
    return ", ".join(parts) or "-"


def supernet_training_settings(config: CmpnasConfig) -> SupernetTrainingSettings:
    supernet = config.supernet
    return SupernetTrainingSettings(
        optim=OptimSettings(epochs=supernet.epochs, batch_size=supernet.batch_size, lr=supernet.lr,
                            weight_decay=supernet.weight_decay, seed=config.search.seed),
        loss_weights=dict(config.training.loss_weights),
        num_random_subnets=supernet.num_random_subnets,
        distillation_weight=supernet.distillation_weight if supernet.distillation else 0.0,
        channels_last=config.training.channels_last,
        mixed_precision=config.training.mixed_precision,
    )


def check_supernet_fits_cluster(config: CmpnasConfig) -> None:
    nodes = [node.get("Resources", {}) for node in ray.nodes() if node.get("Alive")]
    for field, key, wanted in (("supernet.cpus", "CPU", config.supernet.cpus), ("supernet.gpus", "GPU", config.supernet.gpus)):
        largest = max((node.get(key, 0.0) for node in nodes), default=0.0)
        if wanted > largest and config.ray.address is None:
            raise ResourceRequestError(f"{field}={wanted} but the largest node of the Ray cluster has {largest:g} "
                                       f"{key}s: the supernet training would never start; lower {field}")


def train_supernet_job(config: CmpnasConfig, console: Console | None = None) -> SupernetOutcome:
    console = console or Console()
    log = console.log
    output_dir = prepare_output_dir(config)
    data = load_data(config)
    log(f"data: {data.summary()}")
    gallery_checkpoint = obtain_gallery(config, data, pick_device(), log)
    space = create_space(config.search_space.name, embed_dim=gallery_checkpoint.model.arch.embed_dim,
                         in_chans=data.in_chans)
    gallery = compute_gallery_embeddings(gallery_checkpoint, data, pick_device())
    gallery_checkpoint.model.to("cpu")
    log(f"gallery model embedded {gallery.images_embedded} images ({gallery.seconds:.1f}s)")
    settings = supernet_training_settings(config)

    started_ray = connect_ray(config)
    try:
        check_supernet_fits_cluster(config)
        tracker = SearchTracker(resolve_tracking_uri(config.tracking.uri), config.tracking.experiment)
        run = tracker.client.create_run(
            tracker.experiment_id, run_name=f"supernet-{space.name}-{time.strftime('%Y%m%d-%H%M%S')}",
            tags={ROLE_TAG: "supernet", "gallery_fingerprint": gallery.fingerprint, "cmpnas_version": cmpnas_version(),
                  "dataset": data.name, "search_space": space.name},
        )
        run_id = run.info.run_id
        tracker.log_params(run_id, {**flatten({"supernet": config.supernet.model_dump(mode="json")}),
                                    "training.loss_weights": dict(config.training.loss_weights),
                                    "search_space.name": space.name, "seed": config.search.seed, **data.summary()})
        log(f"training the supernet of '{space.name}' for {settings.optim.epochs} epochs "
            f"(largest + smallest + {settings.num_random_subnets} random subnets per step, distillation weight "
            f"{settings.distillation_weight:g}); MLflow run {run_id} at {tracker.tracking_uri}")
        try:
            outcome = _fit_and_save(config, data, gallery, space.name, settings, tracker, run_id, output_dir, console)
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


def _fit_and_save(config, data, gallery, space_name, settings, tracker, run_id, output_dir, console) -> SupernetOutcome:
    shared = SharedSupernetInputs(data=data, gallery=gallery, space_name=space_name, training=settings,
                                  threads=max(1, math.ceil(config.supernet.cpus)))
    trainable = tune.with_resources(tune.with_parameters(run_supernet_training, shared=shared),
                                    {"cpu": config.supernet.cpus, "gpu": config.supernet.gpus})
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(num_samples=1, trial_dirname_creator=lambda trial: f"trial_{trial.trial_id}"),
        run_config=tune.RunConfig(
            name=f"supernet-{run_id[:8]}",
            storage_path=config.ray.storage_path or str(output_dir / "ray_results"),
            callbacks=[SupernetProgressCallback(tracker, run_id, console, settings.optim.epochs)],
            failure_config=tune.FailureConfig(max_failures=config.resources.max_failures),
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            verbose=0,
        ),
    )
    result = tuner.fit()[0]
    if result.error is not None or result.checkpoint is None:
        tracker.set_tag(run_id, "error", str(result.error)[-5000:])
        raise SupernetTrainingError(f"supernet training failed: {result.error}")
    path = config.supernet_checkpoint_path
    path.parent.mkdir(parents=True, exist_ok=True)
    with result.checkpoint.as_directory() as folder:
        temporary = path.with_name(path.name + ".tmp")
        shutil.copyfile(Path(folder) / SUPERNET_FILE, temporary)
        temporary.replace(path)
    checkpoint = load_supernet(path)
    history = [row for row in result.metrics_dataframe.to_dict("records")] if result.metrics_dataframe is not None else []
    final = result.metrics
    tracker.log_metrics(run_id, {"supernet_train_seconds": final["train_seconds"],
                                 "supernet_cpu_seconds": final["cpu_seconds"], "epochs": final["epoch"]})
    tracker.set_tag(run_id, "supernet_fingerprint", checkpoint.fingerprint)
    tracker.log_artifact(run_id, path, "supernet")
    return SupernetOutcome(path, checkpoint.fingerprint, run_id, history, final["train_seconds"], final["cpu_seconds"])
