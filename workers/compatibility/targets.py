"""What every compatibility-trained step needs from the frozen gallery, built once per training.

Candidate fine-tuning and supernet training both train a query network next to its own
classifier, against the gallery's frozen classifier and its cached embeddings of the train split;
``CompatibilityTargets`` holds those and turns one batch of query embeddings into a ``LossContext``.

With augmentation the cached embeddings (of whole images) no longer match what the query model
sees, so the gallery model itself (``view_gallery``) embeds each augmented batch: the targets
follow the crop. Precomputed embeddings cannot, which is why augmentation is refused with them.
The unlabelled pool (``data.unlabelled``) is handled alike: its cached embeddings, or the gallery
model's embedding of each augmented pool view.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

from workers.datasets import RetrievalData
from workers.gallery.embeddings import GalleryEmbeddings
from workers.gallery.sources import GalleryLoader, GalleryModel
from workers.training.batches import AugmentationSettings
from workers.training.losses import LossContext


def open_view_gallery(augmentation: AugmentationSettings | None, loader: GalleryLoader | None,
                      fingerprint: str) -> GalleryModel | None:
    """The gallery model in this trial, when augmented views need its targets (None otherwise); it must be
    the one the job embedded with (``fingerprint``)."""
    if augmentation is None:
        return None
    if loader is None:
        raise ValueError("augmented training needs a GalleryLoader to open the gallery model in the trial")
    return loader.open_matching(fingerprint)


@dataclass(frozen=True)
class CompatibilityTargets:
    own_classifier: nn.Linear
    gallery_classifier: Callable[[torch.Tensor], torch.Tensor]
    logit_scale: float
    # The cached embeddings of the train split; None with a view gallery (never read then, so a trial
    # does not touch the N x D array the object store maps into it).
    gallery_train_embeddings: torch.Tensor | None
    device: torch.device
    view_gallery: GalleryModel | None = None

    @classmethod
    def build(cls, data: RetrievalData, gallery: GalleryEmbeddings, device: torch.device,
              view_gallery: GalleryModel | None = None, with_pool: bool = False) -> "CompatibilityTargets":
        """A fresh own classifier (trained with the query network) and the gallery's frozen side;
        ``view_gallery``: the gallery model, when batches are augmented; ``with_pool``: batches carry
        rows of the unlabelled pool, whose cached embeddings follow the train split's (row ``len(train) + i``
        is pool image ``i``, as ``workers.training.batches.PooledBatches`` numbers them)."""
        cached = None
        if view_gallery is None:
            if with_pool and gallery.unlabelled is None:
                raise ValueError("the unlabelled pool's gallery embeddings are missing (compute_gallery_embeddings "
                                 "embeds data.unlabelled)")
            parts = [gallery.train, gallery.unlabelled] if with_pool else [gallery.train]
            cached = torch.as_tensor(np.concatenate([np.asarray(part) for part in parts]), device=device)
        return cls(
            own_classifier=nn.Linear(gallery.embed_dim, data.num_classes).to(device),
            gallery_classifier=gallery.classifier(device),
            logit_scale=gallery.logit_scale,
            gallery_train_embeddings=cached,
            device=device,
            view_gallery=view_gallery,
        )

    def view_embeddings(self, batch: torch.Tensor) -> torch.Tensor | None:
        """The gallery model's embeddings of this uint8 batch (as augmented), or None without a view gallery."""
        if self.view_gallery is None:
            return None
        images = batch.cpu().numpy()
        embedded = self.view_gallery.embed(images, [""] * len(images), self.device, batch_size=len(images))
        return torch.as_tensor(embedded, device=self.device)

    def context(self, query_embeddings: torch.Tensor, batch_labels: torch.Tensor, index: torch.Tensor,
                view_embeddings: torch.Tensor | None = None) -> LossContext:
        """The loss context of one batch; ``index`` selects the batch's rows of the train split.
        ``view_embeddings``: the gallery model's embeddings of the batch as the query model saw it
        (an augmented view), used instead of the cached ones of the whole images."""
        return LossContext(
            query_embeddings=query_embeddings,
            labels=batch_labels,
            own_classifier=lambda embeddings: self.own_classifier(self.logit_scale * embeddings),
            gallery_classifier=self.gallery_classifier,
            gallery_embeddings=view_embeddings if view_embeddings is not None else self.gallery_train_embeddings[index],
        )
