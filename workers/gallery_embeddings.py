"""Gallery-side embeddings, computed once per search and shared with every trial.

Trials never run the gallery model: they get these arrays and the frozen classifier weights
through the Ray object store. ``images_embedded`` is the gallery model's own count of the
images it embedded, so the once-per-search promise can be checked.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from workers.datasets import RetrievalData
from workers.gallery import GalleryCheckpoint
from workers.preprocess import embed_images


@dataclass(frozen=True)
class GalleryEmbeddings:
    train: np.ndarray
    query: np.ndarray
    gallery: np.ndarray
    classifier_weight: np.ndarray
    classifier_bias: np.ndarray
    logit_scale: float
    fingerprint: str
    images_embedded: int
    seconds: float

    @property
    def embed_dim(self) -> int:
        return int(self.gallery.shape[1])

    def classifier(self, device: torch.device):
        """The frozen gallery classifier as a function of (query) embeddings."""
        weight = torch.as_tensor(self.classifier_weight, device=device)
        bias = torch.as_tensor(self.classifier_bias, device=device)
        scale = self.logit_scale
        return lambda embeddings: torch.nn.functional.linear(scale * embeddings, weight, bias)


def compute_gallery_embeddings(
    checkpoint: GalleryCheckpoint, data: RetrievalData, device: torch.device, batch_size: int = 512
) -> GalleryEmbeddings:
    model = checkpoint.model.to(device).eval()
    start_count = model.images_embedded
    started = time.perf_counter()
    embedded = {
        split: embed_images(model, getattr(data, split).images, checkpoint.mean, checkpoint.std,
                            model.arch.image_size, device, batch_size)
        for split in ("train", "query", "gallery")
    }
    return GalleryEmbeddings(
        **embedded,
        classifier_weight=model.classifier.weight.detach().cpu().numpy().copy(),
        classifier_bias=model.classifier.bias.detach().cpu().numpy().copy(),
        logit_scale=model.arch.logit_scale,
        fingerprint=checkpoint.fingerprint,
        images_embedded=model.images_embedded - start_count,
        seconds=time.perf_counter() - started,
    )
