"""Train a weight-sharing supernet against the frozen gallery (sandwich rule, in-place distillation).

Every step samples the largest, the smallest and ``num_random_subnets`` uniform subnets of the
space (the sandwich rule), runs each on the batch at its own input resolution, and sums their
compatibility losses (the same ``WeightedLossSum`` as candidate fine-tuning, against the same
cached gallery embeddings and frozen gallery classifier). With distillation on, every subnet but
the largest is also pulled towards the largest one's embedding of the same image (in-place
distillation: the teacher is the supernet itself, detached). One backward pass per step, so all
sampled subnets update the shared weights together.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from search_space.supernet import ElasticSupernet, sandwich_specs
from workers.compatibility_targets import CompatibilityTargets
from workers.datasets import RetrievalData
from workers.fit import EpochCallback, OptimSettings, StateSink, fit
from workers.gallery_embeddings import GalleryEmbeddings
from workers.losses import DEFAULT_LOSS_WEIGHTS, WeightedLossSum
from workers.gallery_sources import GalleryModel
from workers.preprocess import to_model_input
from workers.training_batches import AugmentationSettings, ImageBatches


@dataclass(frozen=True)
class SupernetTrainingSettings:
    optim: OptimSettings
    loss_weights: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS))
    # loss name -> parameter name -> value (training.loss_parameters); keyword-only
    loss_parameters: dict[str, dict[str, float]] = field(default_factory=dict, kw_only=True)
    num_random_subnets: int = 2
    distillation_weight: float = 1.0
    channels_last: bool = True
    mixed_precision: bool = False
    augmentation: AugmentationSettings | None = None


def distillation_loss(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """1 - cosine similarity to the largest subnet's (detached) embedding of the same image."""
    return (1.0 - F.cosine_similarity(student, teacher.detach(), dim=1)).mean()


def train_supernet(
    supernet: ElasticSupernet,
    data: RetrievalData,
    gallery: GalleryEmbeddings,
    settings: SupernetTrainingSettings,
    device: torch.device,
    on_epoch: EpochCallback | None = None,
    state_sink: StateSink | None = None,
    resume: dict[str, Any] | None = None,
    view_gallery: GalleryModel | None = None,
) -> list[dict[str, float]]:
    """Train ``supernet`` in place; per-epoch stats average every sampled subnet's summed losses.

    Stats name the largest and the smallest subnet's parts separately (``largest_loss_*``,
    ``smallest_loss_*``) so the curves show both ends of the space. ``state_sink``/``resume`` as
    in ``fit``; the subnets sampled at each step follow from the seed and the step number, so a
    resumed run samples the same subnets as an uninterrupted one. Each batch is read once and
    preprocessed at each sampled subnet's resolution, exactly as a candidate of that resolution
    sees it; with ``settings.augmentation``, ``view_gallery`` embeds each augmented batch.
    """
    torch.manual_seed(settings.optim.seed)
    if settings.augmentation is not None and view_gallery is None:
        raise ValueError("augmented training needs the gallery model (view_gallery) to embed each augmented view")
    space = supernet.space
    losses = WeightedLossSum(settings.loss_weights, settings.loss_parameters)
    targets = CompatibilityTargets.build(data, gallery, device,
                                         view_gallery if settings.augmentation is not None else None)
    trainable = nn.ModuleDict({"supernet": supernet, "own_classifier": targets.own_classifier})
    batches = ImageBatches(data.train.images, data.train.labels, device, settings.augmentation, settings.optim.seed)
    autocast = settings.mixed_precision and device.type == "cuda"
    steps_per_epoch = max(1, math.ceil(len(data.train) / settings.optim.batch_size))
    step_counter = [steps_per_epoch * int(resume["epoch"]) if resume is not None else 0]

    def step(batch: torch.Tensor, batch_labels: torch.Tensor, index: torch.Tensor):
        rng = random.Random(f"{settings.optim.seed}:{step_counter[0]}")
        step_counter[0] += 1
        total = torch.zeros((), device=device)
        parts: dict[str, float] = {}
        teacher = None
        view_embeddings = targets.view_embeddings(batch)
        inputs: dict[int, torch.Tensor] = {}
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=autocast):
            for position, spec in enumerate(sandwich_specs(space, rng, settings.num_random_subnets)):
                if spec.resolution not in inputs:
                    inputs[spec.resolution] = to_model_input(batch, data.mean, data.std, spec.resolution, device,
                                                             settings.channels_last)
                embeddings = supernet(inputs[spec.resolution], spec)
                loss, loss_parts = losses(targets.context(embeddings, batch_labels, index, view_embeddings))
                if position == 0:
                    teacher = embeddings.detach()
                elif settings.distillation_weight > 0:
                    distill = distillation_loss(embeddings, teacher)
                    loss = loss + settings.distillation_weight * distill
                    parts["loss_distillation"] = parts.get("loss_distillation", 0.0) + distill.item()
                if position < 2:
                    end = "largest" if position == 0 else "smallest"
                    parts.update({f"{end}_{name}": value for name, value in loss_parts.items()})
                total = total + loss.float()
        if "loss_distillation" in parts:
            parts["loss_distillation"] /= max(1, settings.num_random_subnets + 1)
        return total, parts

    return fit(trainable, batches, step, settings.optim, on_epoch, state_sink, resume)
