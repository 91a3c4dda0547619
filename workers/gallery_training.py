"""Train the gallery (paragon) model on the train split with its own classifier."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from workers.datasets import RetrievalData
from workers.fit import EpochCallback, OptimSettings, fit
from workers.gallery import GalleryArchitecture, GalleryEmbeddingNet
from workers.preprocess import to_model_input
from workers.training_batches import ImageBatches


@dataclass(frozen=True)
class GalleryTrainingSettings:
    backbone: str
    embed_dim: int
    optim: OptimSettings
    stem_stride: int = 2
    logit_scale: float = 16.0


def train_gallery(
    data: RetrievalData,
    settings: GalleryTrainingSettings,
    device: torch.device,
    on_epoch: EpochCallback | None = None,
) -> GalleryEmbeddingNet:
    torch.manual_seed(settings.optim.seed)
    arch = GalleryArchitecture(
        backbone=settings.backbone,
        embed_dim=settings.embed_dim,
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        image_size=data.image_size,
        stem_stride=settings.stem_stride,
        logit_scale=settings.logit_scale,
    )
    model = GalleryEmbeddingNet(arch).to(device)
    batches = ImageBatches(data.train.images, data.train.labels, device)

    def step(batch: torch.Tensor, batch_labels: torch.Tensor, _index: torch.Tensor):
        inputs = to_model_input(batch, data.mean, data.std, data.image_size, device)
        return F.cross_entropy(model.classify(model(inputs)), batch_labels), {}

    fit(model, batches, step, settings.optim, on_epoch)
    return model.eval().requires_grad_(False)
