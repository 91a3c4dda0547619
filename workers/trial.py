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

import numpy as np
import torch

from evaluators import FLOPS_CONVENTION, count_complexity, create_task
from evaluators.agreement import agreement_metrics
from evaluators.latency import LATENCY_METHOD, measure_model_latency
from search_space import ArchSpec, build_query_model
from search_space.supernet import extract_subnet
from workers.compatibility.bn_calibration import calibration_indices, recalibrate_batch_norm
from workers.compatibility.candidate import fine_tune_candidate
from workers.compatibility.targets import open_view_gallery
from workers.compatibility.training import CompatibilityTrainingSettings, TrainingRun
from workers.datasets import ImageSet, RetrievalData
from workers.gallery.embeddings import GalleryEmbeddings, HeldOutSplits
from workers.gallery.sources import GalleryLoader
from workers.training.fit import EpochHooks
from workers.training.preprocess import ModelInput, embed_images, pick_device, to_model_input
from workers.trial_report import MODEL_FILE, SPEC_FILE

TRAINER_STATE_FILE = "trainer_state.pt"


@dataclass(frozen=True)
class SharedTrialInputs:
    data: RetrievalData
    gallery: GalleryEmbeddings
    training: CompatibilityTrainingSettings
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
    # evaluation.agreement_k: also report the label-free neighbour agreement (evaluators.agreement) at this k.
    agreement_k: int | None = None


def run_candidate_trial(config: dict[str, Any], shared: SharedTrialInputs) -> None:
    from ray import tune

    torch.set_num_threads(max(1, shared.threads_per_trial))
    spec = ArchSpec.from_json(config["arch"])
    device = pick_device()
    # Seeded before the weights are drawn: a candidate's result depends on its architecture and the
    # seed, not on which worker process happened to run it.
    torch.manual_seed(shared.training.optim.seed)
    trial = _CandidateTrial(spec, shared, device)
    resume = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            # Our own file of tensors and plain containers: weights_only loading executes no code.
            resume = torch.load(Path(folder) / TRAINER_STATE_FILE, map_location=device, weights_only=True)
    if shared.training.optim.epochs == 0:
        trial.report(0, {})
        return
    view_gallery = open_view_gallery(shared.training.augmentation, shared.gallery_loader, shared.gallery.fingerprint)
    run = TrainingRun(shared.data, shared.gallery, device, view_gallery,
                      EpochHooks(on_epoch=trial.report, state_sink=trial.latest_state.update, resume=resume))
    fine_tune_candidate(trial.model, spec.resolution, shared.training, run)


class _CandidateTrial:
    """One candidate being trained: what each epoch reports to Tune (``workers.trial_report``)."""

    def __init__(self, spec: ArchSpec, shared: SharedTrialInputs, device: torch.device):
        self.started, self.started_cpu = time.perf_counter(), time.process_time()
        self.spec, self.shared, self.device = spec, shared, device
        self.model = _initial_model(spec, shared, device)
        self.task = create_task(shared.task)
        self.model_input = ModelInput(shared.data.mean, shared.data.std, spec.resolution, device,
                                      channels_last=shared.training.channels_last)
        self.latest_state: dict[str, Any] = {}

    def embed(self, images: ImageSet):
        return embed_images(self.model, images.images, self.model_input)

    def report(self, epoch: int, stats: dict[str, float]) -> None:
        """Called after each epoch: the metrics of ``workers.trial_report`` and a checkpoint, to Tune."""
        from ray import tune

        data, gallery = self.shared.data, self.shared.gallery
        query_embeddings = self.embed(data.query)
        metrics: dict[str, Any] = {"epoch": epoch, **stats, **self.task.evaluate(
            query_embeddings, data.query.labels, gallery.gallery, data.gallery.labels, "cross", data.pair_ids())}
        final = epoch == self.shared.training.optim.epochs
        if final or self.shared.agreement_k:
            gallery_side = self.embed(data.gallery)
            metrics.update(self._agreement_metrics(query_embeddings, gallery_side, final))
        if final:
            metrics.update(self.task.evaluate(query_embeddings, data.query.labels, gallery_side,
                                              data.gallery.labels, "homo", data.pair_ids()))
            metrics.update(self._held_out_metrics(), **_cost_metrics(self.model, self.spec, self.shared),
                           **self._run_metrics())
        with tempfile.TemporaryDirectory() as folder:
            _save_candidate(Path(folder), self.model, self.spec)
            torch.save(self.latest_state, Path(folder) / TRAINER_STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    def _agreement_metrics(self, query_side, gallery_side, final: bool) -> dict[str, float]:
        """``cross_agreement`` (and, final, ``homo_agreement``) on the pool images held back for it
        (``data.unlabelled.agreement_size``), else on the query and gallery splits' images pooled, each
        image once: no label is read (``evaluators.agreement``)."""
        k = self.shared.agreement_k
        if not k:
            return {}
        data, gallery = self.shared.data, self.shared.gallery
        kinds = ("cross", "homo") if final else ("cross",)
        if data.agreement is not None:
            return agreement_metrics(self.embed(data.agreement), gallery.agreement, k, kinds)
        _, first = np.unique(np.concatenate([data.query.ids, data.gallery.ids]), return_index=True)
        once = np.sort(first)  # leave-one-out pools query and gallery: an image shared by both counts once
        query_model = np.concatenate([query_side, gallery_side])[once]
        gallery_model = np.concatenate([gallery.query, gallery.gallery])[once]
        return agreement_metrics(query_model, gallery_model, k, kinds)

    def _held_out_metrics(self) -> dict[str, float]:
        """Reported only: the held-out queries against the gallery model's gallery, and against its own."""
        held_out = self.shared.held_out
        if held_out is None:
            return {}
        queries = self.embed(held_out.query)
        ids = (held_out.query.ids, held_out.gallery.ids)
        return {**self.task.evaluate(queries, held_out.query.labels, held_out.gallery_embeddings,
                                     held_out.gallery.labels, "heldout_cross", ids),
                **self.task.evaluate(queries, held_out.query.labels, self.embed(held_out.gallery),
                                     held_out.gallery.labels, "heldout_homo", ids)}

    def _run_metrics(self) -> dict[str, Any]:
        """Where and how the trial ran: CPU time of its process (all its threads: compute spent, whatever
        else shares the CPUs), the process's peak resident memory (a reused actor: over all its trials)."""
        metrics: dict[str, Any] = {
            "trial_seconds": time.perf_counter() - self.started,
            "trial_cpu_seconds": time.process_time() - self.started_cpu,
            "device": str(self.device), "node_id": _node_id(), "mode": self.shared.mode,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            # data.trial_train_size: a trial's subset of the train split, a final training the whole of it.
            "train_images": len(self.shared.data.train)}
        if self.device.type == "cuda":
            metrics["gpu_max_memory_mb"] = torch.cuda.max_memory_allocated(self.device) / 2**20
        return metrics


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
        # Once per finished candidate, on its ONNX export: the graph a deployment runs (evaluators.latency).
        metrics["latency_ms"] = measure_model_latency(model, input_shape).median_ms
        metrics["latency_method"] = LATENCY_METHOD
    return metrics


def _save_candidate(folder: Path, model: torch.nn.Module, spec: ArchSpec) -> None:
    from safetensors.torch import save_file

    state = {name: tensor.detach().cpu().contiguous() for name, tensor in model.state_dict().items()}
    save_file(state, str(folder / MODEL_FILE), metadata={"arch": spec.to_json()})
    (folder / SPEC_FILE).write_text(spec.to_json())
