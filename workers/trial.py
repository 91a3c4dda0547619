"""The Ray Tune trainable: one candidate architecture, fine-tuned and measured.

Everything a trial needs that is the same for all trials (data, gallery embeddings, settings,
the supernet's weights in the inherit modes) arrives once through the object store via
``tune.with_parameters``; the trial config carries only the architecture. Streamed data arrives as
readers of the node's shard cache, so a trial reads the images it trains and evaluates on by batch.
With augmentation the trial also opens the gallery model (the same file, checked by fingerprint)
to embed each augmented view. A candidate starts from random weights (mode ``scratch``) or from
its slice of the supernet with recalibrated batch norm (``inherit``: then fine-tuned;
``inherit_zero_shot``: evaluated as is, reported as epoch 0). What each epoch reports, and what
makes the last epoch's result final, is defined in ``workers.trial_report``. A retried trial
resumes after the last epoch it checkpointed, so no epoch is reported twice. With a validation split
the epochs report the validation halves (what strategies and schedulers rank on) and the last one
adds the held-out splits (``heldout_*``), which nothing ranks on.
"""

from __future__ import annotations

import json
import resource
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from evaluators import FLOPS_CONVENTION, count_complexity, create_task, measure_cpu_latency_ms
from search_space import ArchSpec, build_query_model
from search_space.supernet import extract_subnet
from workers.bn_calibration import calibration_indices, recalibrate_batch_norm
from workers.candidate_training import CandidateTrainingSettings, fine_tune_candidate
from workers.datasets import ImageSet, RetrievalData
from workers.gallery_embeddings import GalleryEmbeddings, HeldOutSplits
from workers.compatibility_targets import open_view_gallery
from workers.gallery_sources import GalleryLoader
from workers.preprocess import embed_images, pick_device, to_model_input
from workers.trial_report import MODEL_FILE, SPEC_FILE

TRAINER_STATE_FILE = "trainer_state.pt"


@dataclass(frozen=True)
class SharedTrialInputs:
    data: RetrievalData
    gallery: GalleryEmbeddings
    training: CandidateTrainingSettings
    paragon_flops: int
    threads_per_trial: int = 1
    measure_latency: bool = True
    mode: str = "scratch"
    supernet_state: dict[str, torch.Tensor] | None = None
    calibration_images: int = 2000
    task: str = "retrieval"  # evaluators.tasks: which metrics every epoch reports
    # Opens the gallery model in the trial: needed only when training is augmented (targets follow the crop).
    gallery_loader: GalleryLoader | None = None
    # With a validation split: ``data``'s query/gallery are the validation halves (ranked on), and these
    # held-out splits are evaluated once, after the last epoch, for reporting only.
    held_out: HeldOutSplits | None = None


def run_candidate_trial(config: dict[str, Any], shared: SharedTrialInputs) -> None:
    from ray import tune

    torch.set_num_threads(max(1, shared.threads_per_trial))
    started = time.perf_counter()
    started_cpu = time.process_time()
    spec = ArchSpec.from_json(config["arch"])
    device = pick_device()
    # Seeded before the weights are drawn: a candidate's result depends on its architecture and the
    # seed, not on which worker process happened to run it.
    torch.manual_seed(shared.training.optim.seed)
    model = _initial_model(spec, shared, device)
    data, gallery = shared.data, shared.gallery
    task = create_task(shared.task)
    epochs = shared.training.optim.epochs

    def embed(images: ImageSet):
        return embed_images(model, images.images, data.mean, data.std, spec.resolution, device,
                            channels_last=shared.training.channels_last)

    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            # Our own file of tensors and plain containers: weights_only loading executes no code.
            resume = torch.load(Path(folder) / TRAINER_STATE_FILE, map_location=device, weights_only=True)
    latest_state: dict[str, Any] = {}

    def on_epoch(epoch: int, stats: dict[str, float]) -> None:
        query_embeddings = embed(data.query)
        cross = task.evaluate(query_embeddings, data.query.labels, gallery.gallery, data.gallery.labels, "cross")
        metrics: dict[str, Any] = {"epoch": epoch, **stats, **cross}
        if epoch == epochs:
            metrics.update(task.evaluate(query_embeddings, data.query.labels, embed(data.gallery), data.gallery.labels,
                                         "homo"))
            held_out = shared.held_out
            if held_out is not None:  # reported only: against the gallery model's gallery, and against its own
                queries = embed(held_out.query)
                metrics.update(task.evaluate(queries, held_out.query.labels, held_out.gallery_embeddings,
                                             held_out.gallery.labels, "heldout_cross"))
                metrics.update(task.evaluate(queries, held_out.query.labels, embed(held_out.gallery),
                                             held_out.gallery.labels, "heldout_homo"))
            metrics.update(_cost_metrics(model, spec, shared))
            # CPU time of this trial's process (all its threads): compute spent, whatever else shares the CPUs.
            metrics.update(trial_seconds=time.perf_counter() - started, trial_cpu_seconds=time.process_time() - started_cpu,
                           device=str(device), node_id=_node_id(), mode=shared.mode,
                           # The trial process's peak resident memory (a reused actor: over all its trials).
                           peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
            if device.type == "cuda":
                metrics["gpu_max_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        with tempfile.TemporaryDirectory() as folder:
            _save_candidate(Path(folder), model, spec)
            torch.save(latest_state, Path(folder) / TRAINER_STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    if epochs == 0:
        on_epoch(0, {})
        return
    fine_tune_candidate(model, spec.resolution, data, gallery, shared.training, device, on_epoch,
                        state_sink=latest_state.update, resume=resume,
                        view_gallery=open_view_gallery(shared.training.augmentation, shared.gallery_loader,
                                                       shared.gallery.fingerprint))


def _initial_model(spec: ArchSpec, shared: SharedTrialInputs, device: torch.device) -> torch.nn.Module:
    """Random weights (scratch) or the supernet's slice with batch norm recalibrated on training images."""
    if shared.mode == "scratch":
        model = build_query_model(spec).to(device)
    else:
        if shared.supernet_state is None:
            raise ValueError(f"training.mode={shared.mode!r} needs the supernet's weights, none were passed")
        model = extract_subnet(shared.supernet_state, spec).to(device)
    if shared.training.channels_last:
        model = model.to(memory_format=torch.channels_last)
    if shared.mode != "scratch":
        # Only the calibration images are preprocessed: fine-tuning preprocesses the train split itself.
        data = shared.data
        chosen = calibration_indices(len(data.train.images), shared.calibration_images, shared.training.optim.seed)
        inputs = to_model_input(data.train.images[chosen.numpy()], data.mean, data.std, spec.resolution, device,
                                shared.training.channels_last)
        recalibrate_batch_norm(model, inputs, len(inputs), seed=shared.training.optim.seed)
    return model


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id() if ray.is_initialized() else "local"


def _cost_metrics(model: torch.nn.Module, spec: ArchSpec, shared: SharedTrialInputs) -> dict[str, Any]:
    input_shape = (spec.in_chans, spec.resolution, spec.resolution)
    complexity = count_complexity(model, input_shape)
    metrics: dict[str, Any] = {
        "flops": complexity.flops,
        "mflops": complexity.mflops,
        "params": complexity.params,
        "cost_reduction": shared.paragon_flops / max(1, complexity.flops),
        "flops_convention": FLOPS_CONVENTION,
        "flops_skipped_ops": json.dumps(complexity.skipped_ops, sort_keys=True),
    }
    if shared.measure_latency:
        metrics["latency_ms"] = measure_cpu_latency_ms(model, input_shape)
    return metrics


def _save_candidate(folder: Path, model: torch.nn.Module, spec: ArchSpec) -> None:
    from safetensors.torch import save_file

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / MODEL_FILE), metadata={"arch": spec.to_json()})
    (folder / SPEC_FILE).write_text(spec.to_json())
