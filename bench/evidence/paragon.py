"""The paragon recipe: the protocol's gallery model trained once, resumable after every epoch, then
measured: classification accuracy (validation and test), leave-one-out retrieval on the test split
with its interval, MFLOPs and parameters, and the machine it trained on.

Files in ``<workdir>/paragon/<backbone>-s<stem stride>/``: ``training_state.pt`` (the full state
after the last finished epoch: a rerun continues from it), ``epochs.jsonl`` (one line per epoch),
``gallery.safetensors`` (the frozen gallery model of every later recipe), ``held_out_outcomes.npz``
(per-query leave-one-out outcomes, for paired intervals) and ``result.json``.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from evaluators import count_complexity
from evaluators.intervals import BootstrapSettings, mean_interval
from evaluators.retrieval import RetrievalEvaluator
from workers.datasets.types import ImageSet
from workers.gallery.model import GalleryEmbeddingNet, load_gallery, save_gallery
from workers.gallery.training import GalleryTrainingSettings, GalleryTrainingState, train_gallery
from workers.storage.durable_write import replaced_durably
from workers.training.batches import AugmentationSettings
from workers.training.fit import OptimSettings
from workers.training.preprocess import ModelInput, embed_images, to_model_input

from protocol import Protocol, code_commit
from splits import ProtocolData


@dataclass(frozen=True)
class ParagonRecipe:
    """One configuration of the protocol's paragon recipe (the paragon, or an alternative)."""

    settings: GalleryTrainingSettings

    @property
    def name(self) -> str:
        return f"{self.settings.backbone}-s{self.settings.stem_stride}"


def paragon_recipe(section: dict, backbone: str | None = None, stem_stride: int | None = None) -> ParagonRecipe:
    """The protocol's ``paragon`` section as training settings; ``backbone``/``stem_stride``: an alternative."""
    augmentation = section["augmentation"]
    if augmentation["kind"] != "pad_crop":
        raise ValueError(f"paragon.augmentation.kind {augmentation['kind']!r}: this runner knows pad_crop")
    optim = OptimSettings(epochs=int(section["epochs"]), batch_size=int(section["batch_size"]), lr=float(section["lr"]),
                          weight_decay=float(section["weight_decay"]),
                          warmup_fraction=float(section["warmup_fraction"]), seed=int(section["seed"]))
    return ParagonRecipe(GalleryTrainingSettings(
        backbone=backbone or section["backbone"], embed_dim=int(section["embed_dim"]), optim=optim,
        stem_stride=int(stem_stride or section["stem_stride"]), logit_scale=float(section["logit_scale"]),
        augmentation=AugmentationSettings(pad_padding=int(augmentation["padding"]),
                                          horizontal_flip=bool(augmentation["horizontal_flip"]))))


def train_paragon(recipe: ParagonRecipe, data: ProtocolData, folder: Path, device: torch.device, log) -> Path:
    """Train (or continue) the recipe in ``folder``; returns its gallery checkpoint."""
    checkpoint = folder / "gallery.safetensors"
    if checkpoint.exists():
        log(f"{recipe.name}: trained already ({checkpoint})")
        return checkpoint
    folder.mkdir(parents=True, exist_ok=True)
    state_path = folder / "training_state.pt"
    resume = torch.load(state_path, map_location="cpu", weights_only=False) if state_path.exists() else None
    if resume is not None:
        log(f"{recipe.name}: resuming after epoch {resume['epoch']} of {recipe.settings.optim.epochs}")

    def sink(state: dict) -> None:
        with replaced_durably(state_path) as temporary:
            torch.save(state, temporary)

    def on_epoch(epoch: int, stats: dict) -> None:
        with (folder / "epochs.jsonl").open("a") as lines:
            lines.write(json.dumps({"epoch": epoch, "time": time.time(), **stats}) + "\n")
        log(f"{recipe.name}: epoch {epoch}/{recipe.settings.optim.epochs} loss {stats['loss']:.4f}, "
            f"{stats['images_per_second']:.0f} images/s")

    started = time.time()
    model = train_gallery(data.selection, recipe.settings, device, on_epoch=on_epoch,
                          state=GalleryTrainingState(sink=sink, resume=resume))
    selection = data.selection
    save_gallery(checkpoint, model, selection.mean, selection.std,
                 {"recipe": recipe.name, "train_images": len(selection.train), "epochs": recipe.settings.optim.epochs,
                  "last_session_seconds": time.time() - started, "machine": machine()})
    return checkpoint


def measure_paragon(checkpoint_path: Path, data: ProtocolData, protocol: Protocol, device: torch.device) -> dict:
    """The figures of a trained recipe (module docstring); writes the per-query outcomes beside it."""
    checkpoint = load_gallery(checkpoint_path, device)
    model = checkpoint.model
    model_input = ModelInput(checkpoint.mean, checkpoint.std, model.arch.image_size, device)
    selection, held_out = data.selection, data.held_out
    validation = ImageSet(np.concatenate([selection.query.images, selection.gallery.images]),
                          np.concatenate([selection.query.labels, selection.gallery.labels]))
    embeddings = embed_images(model, held_out.images, model_input)
    outcomes = RetrievalEvaluator().per_query(embeddings, held_out.labels, embeddings, held_out.labels,
                                              (held_out.ids, held_out.ids))
    np.savez_compressed(checkpoint_path.parent / "held_out_outcomes.npz", first_relevant_rank=outcomes.first_relevant_rank,
                        average_precision=outcomes.average_precision)
    intervals = protocol.section("intervals")
    bootstrap = BootstrapSettings(replicates=int(intervals["replicates"]), level=float(intervals["level"]))
    complexity = count_complexity(model, (model.arch.in_chans, model.arch.image_size, model.arch.image_size))
    retrieval = {
        "r1": mean_interval([100 * outcomes.recall_hits(1)], bootstrap).as_dict(),
        "r5": mean_interval([100 * outcomes.recall_hits(5)], bootstrap).as_dict(),
        "map": mean_interval([100 * outcomes.average_precision], bootstrap).as_dict(),
    }
    return {**protocol.identity(), "code_commit": code_commit(), "measured": time.strftime("%Y-%m-%d %H:%M UTC",
                                                                                       time.gmtime()),
            "recipe": checkpoint.info.get("recipe"), "trained": checkpoint.info,
            "validation_accuracy": accuracy(model, validation, model_input),
            "test_accuracy": accuracy(model, held_out, model_input),
            "held_out_leave_one_out": {**retrieval, "queries": int(len(outcomes.first_relevant_rank))},
            "mflops": complexity.flops / 1e6, "params": complexity.params, "fingerprint": checkpoint.fingerprint}


def accuracy(model: GalleryEmbeddingNet, images: ImageSet, model_input: ModelInput, batch_size: int = 512) -> float:
    """Percent of ``images`` the model's own classifier labels correctly."""
    correct = 0
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            batch = torch.from_numpy(np.ascontiguousarray(images.images[start : start + batch_size]))
            inputs = to_model_input(batch.to(model_input.device), model_input.mean, model_input.std,
                                    model_input.resolution, model_input.device)
            predicted = model.classify(model(inputs)).argmax(dim=1).cpu().numpy()
            correct += int((predicted == images.labels[start : start + batch_size]).sum())
    return 100.0 * correct / len(images)


def machine() -> dict:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"host": platform.node(), "cpus": torch.get_num_threads(), "gpu": gpu, "torch": torch.__version__,
            "python": platform.python_version()}
