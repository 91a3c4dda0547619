"""The Ray Tune trainable that trains the supernet: one trial, on whichever node has its resources.

Data, cached gallery embeddings and settings arrive once through the object store
(``tune.with_parameters``). Every epoch reports its losses and a checkpoint holding the supernet
(safetensors, with the metadata a search checks) and the trainer state, so a retried trial
resumes after the last finished epoch.
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from search_space.supernet import ElasticSupernet
from workers.compatibility.supernet import SupernetTrainingSettings, train_supernet
from workers.compatibility.supernet_checkpoint import save_supernet
from workers.compatibility.targets import open_view_gallery
from workers.compatibility.training import TrainingRun
from workers.datasets import RetrievalData
from workers.gallery.embeddings import GalleryEmbeddings
from workers.gallery.sources import GalleryLoader
from workers.training.fit import EpochHooks
from workers.training.preprocess import pick_device

SUPERNET_FILE = "supernet.safetensors"
TRAINER_STATE_FILE = "trainer_state.pt"


@dataclass(frozen=True)
class SharedSupernetInputs:
    data: RetrievalData
    gallery: GalleryEmbeddings
    space_name: str
    training: SupernetTrainingSettings
    threads: int = 1
    # Opens the gallery model in the trial: needed only when training is augmented (targets follow the crop).
    gallery_loader: GalleryLoader | None = None


def run_supernet_training(config: dict[str, Any], shared: SharedSupernetInputs) -> None:
    from ray import tune

    torch.set_num_threads(max(1, shared.threads))
    started, started_cpu = time.perf_counter(), time.process_time()
    device = pick_device()
    data, gallery = shared.data, shared.gallery
    torch.manual_seed(shared.training.compatibility.optim.seed)
    supernet = ElasticSupernet.for_space(shared.space_name, embed_dim=gallery.embed_dim, in_chans=data.in_chans)
    supernet = supernet.to(device)
    if shared.training.compatibility.channels_last:
        supernet = supernet.to(memory_format=torch.channels_last)
    epochs = shared.training.compatibility.optim.epochs

    resume = None
    previous_seconds = previous_cpu = 0.0
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as folder:
            # Our own file of tensors and plain containers: weights_only loading executes no code.
            resume = torch.load(Path(folder) / TRAINER_STATE_FILE, map_location=device, weights_only=True)
        previous_seconds, previous_cpu = resume.pop("train_seconds"), resume.pop("cpu_seconds")
    latest_state: dict[str, Any] = {}

    def on_epoch(epoch: int, stats: dict[str, float]) -> None:
        seconds = previous_seconds + time.perf_counter() - started
        cpu_seconds = previous_cpu + time.process_time() - started_cpu
        metrics = {"epoch": epoch, **stats, "train_seconds": seconds, "cpu_seconds": cpu_seconds,
                   "device": str(device)}
        info = {"dataset": data.name, "train_images": len(data.train), "epochs_done": epoch, "epochs": epochs,
                "num_random_subnets": shared.training.num_random_subnets,
                "distillation_weight": shared.training.distillation_weight,
                "loss_weights": shared.training.compatibility.loss_weights, "train_seconds": seconds,
                "cpu_seconds": cpu_seconds}
        with tempfile.TemporaryDirectory() as folder:
            save_supernet(Path(folder) / SUPERNET_FILE, supernet, gallery.fingerprint, info)
            torch.save({**latest_state, "train_seconds": seconds, "cpu_seconds": cpu_seconds},
                       Path(folder) / TRAINER_STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))

    view_gallery = open_view_gallery(shared.training.compatibility.augmentation, shared.gallery_loader,
                                     gallery.fingerprint)
    run = TrainingRun(data, gallery, device, view_gallery,
                      EpochHooks(on_epoch=on_epoch, state_sink=latest_state.update, resume=resume))
    train_supernet(supernet, shared.training, run)
