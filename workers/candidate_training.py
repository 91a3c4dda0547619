"""Fine-tune one candidate query model against the frozen gallery with compatibility losses."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workers.compatibility_targets import CompatibilityTargets
from workers.datasets import RetrievalData
from workers.fit import EpochCallback, OptimSettings, StateSink, fit
from workers.gallery_embeddings import GalleryEmbeddings
from workers.gallery_sources import GalleryModel
from workers.losses import DEFAULT_LOSS_WEIGHTS, WeightedLossSum
from workers.preprocess import to_model_input
from workers.training_batches import AugmentationSettings, ImageBatches


@dataclass(frozen=True)
class CandidateTrainingSettings:
    optim: OptimSettings
    loss_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))
    # loss name -> parameter name -> value (training.loss_parameters); keyword-only
    loss_parameters: dict[str, dict[str, float]] = field(default_factory=dict, kw_only=True)
    channels_last: bool = True
    mixed_precision: bool = False
    augmentation: AugmentationSettings | None = None


def fine_tune_candidate(
    model: nn.Module,
    resolution: int,
    data: RetrievalData,
    gallery: GalleryEmbeddings,
    settings: CandidateTrainingSettings,
    device: torch.device,
    on_epoch: EpochCallback | None = None,
    state_sink: StateSink | None = None,
    resume: dict[str, Any] | None = None,
    view_gallery: GalleryModel | None = None,
) -> list[dict[str, float]]:
    """Train ``model`` (and its own classifier) in place, one batch read and preprocessed at a time.

    ``state_sink`` and ``resume`` pass the training state in and out, as in ``fit``. With
    ``settings.augmentation``, ``view_gallery`` (the gallery model) embeds each augmented batch.
    """
    torch.manual_seed(settings.optim.seed)
    if settings.augmentation is not None and view_gallery is None:
        raise ValueError("augmented training needs the gallery model (view_gallery) to embed each augmented view")
    losses = WeightedLossSum(settings.loss_weights, settings.loss_parameters)
    targets = CompatibilityTargets.build(data, gallery, device,
                                         view_gallery if settings.augmentation is not None else None)
    trainable = nn.ModuleDict({"model": model, "own_classifier": targets.own_classifier})
    batches = ImageBatches(data.train.images, data.train.labels, device, settings.augmentation, settings.optim.seed)
    autocast = settings.mixed_precision and device.type == "cuda"

    def step(batch: torch.Tensor, batch_labels: torch.Tensor, index: torch.Tensor):
        inputs = to_model_input(batch, data.mean, data.std, resolution, device, settings.channels_last)
        view_embeddings = targets.view_embeddings(batch)
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            return losses(targets.context(model(inputs), batch_labels, index, view_embeddings))

    return fit(trainable, batches, step, settings.optim, on_epoch, state_sink, resume)
