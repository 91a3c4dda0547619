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
from workers.losses import DEFAULT_LOSS_WEIGHTS, WeightedLossSum
from workers.preprocess import to_model_input


@dataclass(frozen=True)
class CandidateTrainingSettings:
    optim: OptimSettings
    loss_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))
    channels_last: bool = True
    mixed_precision: bool = False


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
) -> list[dict[str, float]]:
    """Train ``model`` (and its own classifier) in place; images are preprocessed once, up front.

    ``state_sink`` and ``resume`` pass the training state in and out, as in ``fit``.
    """
    torch.manual_seed(settings.optim.seed)
    losses = WeightedLossSum(settings.loss_weights)
    targets = CompatibilityTargets.build(data, gallery, device)
    trainable = nn.ModuleDict({"model": model, "own_classifier": targets.own_classifier})
    inputs = to_model_input(data.train.images, data.mean, data.std, resolution, device, settings.channels_last)
    autocast = settings.mixed_precision and device.type == "cuda"

    def step(batch: torch.Tensor, batch_labels: torch.Tensor, index: torch.Tensor):
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            return losses(targets.context(model(batch), batch_labels, index))

    return fit(trainable, inputs, targets.labels, step, settings.optim, on_epoch, state_sink, resume)
