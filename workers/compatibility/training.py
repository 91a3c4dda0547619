"""One builder for every compatibility training: a query network (and its own classifier) trained
against the frozen gallery, for a candidate (``workers.compatibility.candidate``) and for the
supernet (``workers.compatibility.supernet``) alike.

``CompatibilityTraining`` holds what both build the same way: the weighted losses
(``training.loss_weights``, ``training.loss_parameters``), the gallery's side of a step
(``CompatibilityTargets``: cached embeddings, or the gallery model itself for augmented views), the
batches (``ImageBatches``, augmented when ``settings.augmentation`` is set), bfloat16 autocast on a
GPU (``training.mixed_precision``), the unlabelled pool's rows appended to each batch
(``data.unlabelled``: ``PooledBatches``, trained only through the label-free losses) and the loop (``workers.training.fit``). A trainer writes only its
step: what its network does with one batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workers.compatibility.targets import CompatibilityTargets
from workers.datasets import RetrievalData
from workers.gallery.embeddings import GalleryEmbeddings
from workers.gallery.sources import GalleryModel
from workers.training.batches import AugmentationSettings, ImageBatches, PooledBatches
from workers.training.fit import EpochHooks, OptimSettings, StepLoss, fit
from workers.training.loss_registry import DEFAULT_LOSS_WEIGHTS
from workers.training.losses import LossContext, WeightedLossSum
from workers.training.precision import training_autocast
from workers.training.preprocess import ModelInput


@dataclass(frozen=True)
class CompatibilityTrainingSettings:
    """How a query network is trained against the gallery: the schedule and the losses."""

    optim: OptimSettings
    loss_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))
    # loss name -> parameter name -> value (training.loss_parameters)
    loss_parameters: dict[str, dict[str, float]] = field(default_factory=dict)
    channels_last: bool = True
    mixed_precision: bool = False
    augmentation: AugmentationSettings | None = None
    # data.unlabelled: weight of the label-free losses on the pool's rows (0: the pool does not train)
    # and pool images per step (None: optim.batch_size); see workers.training.losses.WeightedLossSum.
    unlabelled_weight: float = 1.0
    unlabelled_batch_size: int | None = None


@dataclass(frozen=True)
class TrainingRun:
    """What one training reads and where it reports: the data and the gallery's embeddings of it, the
    device, the gallery model itself when batches are augmented (``view_gallery``), and the hooks
    between epochs (``EpochHooks``: callback, state sink, the state to resume from)."""

    data: RetrievalData
    gallery: GalleryEmbeddings
    device: torch.device
    view_gallery: GalleryModel | None = None
    hooks: EpochHooks = EpochHooks()


class CompatibilityTraining:
    """The parts a compatibility training is built from (see the module docstring)."""

    def __init__(self, settings: CompatibilityTrainingSettings, run: TrainingRun):
        if settings.augmentation is not None and run.view_gallery is None:
            raise ValueError("augmented training needs the gallery model (view_gallery) to embed each augmented view")
        torch.manual_seed(settings.optim.seed)
        self.settings, self.run = settings, run
        self.losses = WeightedLossSum(settings.loss_weights, settings.loss_parameters, settings.unlabelled_weight)
        with_pool = run.data.unlabelled is not None and settings.unlabelled_weight > 0
        self.targets = CompatibilityTargets.build(run.data, run.gallery, run.device,
                                                  run.view_gallery if settings.augmentation is not None else None,
                                                  with_pool)
        self.batches = ImageBatches(run.data.train.images, run.data.train.labels, run.device, settings.augmentation,
                                    settings.optim.seed)
        if with_pool:
            self.batches = PooledBatches(self.batches, run.data.unlabelled.images,
                                         settings.unlabelled_batch_size or settings.optim.batch_size)

    def model_input(self, resolution: int) -> ModelInput:
        """How a network of ``resolution`` takes this training's uint8 batches."""
        data = self.run.data
        return ModelInput(data.mean, data.std, resolution, self.run.device, self.settings.channels_last)

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast on a GPU when ``mixed_precision`` is on; nothing otherwise (not on a CPU:
        ``workers.training.precision``'s rules)."""
        return training_autocast(self.run.device, self.settings.mixed_precision, on_cpu=False)

    def context(self, embeddings: torch.Tensor, batch_labels: torch.Tensor, index: torch.Tensor,
                view_embeddings: torch.Tensor | None) -> LossContext:
        return self.targets.context(embeddings, batch_labels, index, view_embeddings)

    def fit(self, network: nn.Module, name: str, step: StepLoss) -> list[dict[str, Any]]:
        """Train ``network`` and the query's own classifier in place, ``step`` giving each batch's loss;
        ``name`` is the network's key in the training state (the resume checkpoint)."""
        trainable = nn.ModuleDict({name: network, "own_classifier": self.targets.own_classifier})
        return fit(trainable, self.batches, step, self.settings.optim, self.run.hooks)
