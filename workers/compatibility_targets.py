"""What every compatibility-trained step needs from the frozen gallery, built once per training.

Candidate fine-tuning and supernet training both train a query network next to its own
classifier, against the gallery's frozen classifier and its cached embeddings of the train split;
``CompatibilityTargets`` holds those and turns one batch of query embeddings into a ``LossContext``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from workers.datasets import RetrievalData
from workers.gallery_embeddings import GalleryEmbeddings
from workers.losses import LossContext


@dataclass(frozen=True)
class CompatibilityTargets:
    own_classifier: nn.Linear
    gallery_classifier: Callable[[torch.Tensor], torch.Tensor]
    logit_scale: float
    labels: torch.Tensor
    gallery_train_embeddings: torch.Tensor

    @classmethod
    def build(cls, data: RetrievalData, gallery: GalleryEmbeddings, device: torch.device) -> "CompatibilityTargets":
        """A fresh own classifier (trained with the query network) and the gallery's frozen side."""
        return cls(
            own_classifier=nn.Linear(gallery.embed_dim, data.num_classes).to(device),
            gallery_classifier=gallery.classifier(device),
            logit_scale=gallery.logit_scale,
            labels=torch.as_tensor(data.train.labels, device=device),
            gallery_train_embeddings=torch.as_tensor(np.asarray(gallery.train), device=device),
        )

    def context(self, query_embeddings: torch.Tensor, batch_labels: torch.Tensor, index: torch.Tensor) -> LossContext:
        """The loss context of one batch; ``index`` selects the batch's rows of the train split."""
        return LossContext(
            query_embeddings=query_embeddings,
            labels=batch_labels,
            own_classifier=lambda embeddings: self.own_classifier(self.logit_scale * embeddings),
            gallery_classifier=self.gallery_classifier,
            gallery_embeddings=self.gallery_train_embeddings[index],
        )
