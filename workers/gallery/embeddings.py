"""Gallery-side embeddings, computed once per search and shared with every trial.

Trials never run the gallery model: they get these arrays and the frozen classifier weights
through the Ray object store. ``images_embedded`` is the gallery model's own count of the
images it embedded (zero for precomputed embeddings), so the once-per-search promise can be
checked. The classifier is the one ``gallery.classifier`` chooses (``workers.gallery.classifier``).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from workers.datasets import RETRIEVAL_SPLITS, ImageSet, RetrievalData
from workers.gallery.classifier import choose_classifier
from workers.gallery.model import GalleryCheckpoint
from workers.gallery.sources import GalleryModel
from workers.gallery.sources.cmpnas_checkpoint import CmpnasGalleryModel

# Above this mean cosine the compatibility losses teach a candidate little more than the common
# direction: candidates end at chance (docs/metrics.md, issue 27).
COLLAPSED_COSINE = 0.9


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
    classifier_kind: str = "from_model"
    # The unlabelled pool's (data.unlabelled), or None without one.
    unlabelled: np.ndarray | None = None
    # The pool images held back for the label-free agreement's (data.unlabelled.agreement_size), or None.
    agreement: np.ndarray | None = None

    @property
    def embed_dim(self) -> int:
        return int(self.gallery.shape[1])

    def mean_pairwise_cosine(self, chunk: int = 65536) -> float:
        """The mean cosine between the train split's embeddings of two different images: near 1 when the
        gallery model embeds every image in nearly one direction (``COLLAPSED_COSINE``)."""
        count, total = len(self.train), np.zeros(self.train.shape[1], dtype=np.float64)
        if count < 2:
            return float("nan")
        for start in range(0, count, chunk):  # by chunk: a streamed split may be a large memory map
            rows = np.asarray(self.train[start : start + chunk], dtype=np.float64)
            total += (rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-12)).sum(axis=0)
        # sum over pairs i != j of u_i . u_j = |sum u|^2 - count
        return float((total @ total - count) / (count * (count - 1)))


    def classifier(self, device: torch.device):
        """The frozen gallery classifier as a function of (query) embeddings."""
        weight = torch.as_tensor(self.classifier_weight, device=device)
        bias = torch.as_tensor(self.classifier_bias, device=device)
        scale = self.logit_scale
        return lambda embeddings: torch.nn.functional.linear(scale * embeddings, weight, bias)


# Embeds one split elsewhere (e.g. on Ray Data): (split name, images) -> (embeddings, images the model ran on).
SplitEmbedder = Callable[[str, ImageSet], tuple[np.ndarray, int]]


def compute_gallery_embeddings(gallery: GalleryModel | GalleryCheckpoint, data: RetrievalData, device: torch.device,
                               classifier: str = "auto", batch_size: int = 512,
                               split_embedder: SplitEmbedder | None = None) -> GalleryEmbeddings:
    """Every split (and the unlabelled pool, ``data.unlabelled``, and its images held back for the agreement,
    ``data.agreement``) through the gallery model once, and the BCT
    classifier over the train split's embeddings.

    The splits are embedded by ``split_embedder`` when given, else here, by ``gallery`` on ``device``,
    ``batch_size`` images at a time (a streamed split is read by batch, never whole).
    A loaded cmpnas checkpoint (``GalleryCheckpoint``, as bench scripts hold one) is taken as its source's model."""
    if isinstance(gallery, GalleryCheckpoint):
        gallery = CmpnasGalleryModel(gallery)
    started = time.perf_counter()
    splits = (*RETRIEVAL_SPLITS, *(name for name in ("unlabelled", "agreement") if getattr(data, name) is not None))
    embedded, images_embedded = _embed_splits(gallery, data, splits, device, batch_size, split_embedder)
    chosen = choose_classifier(classifier, gallery, embedded["train"], data.train.labels, data.num_classes)
    return GalleryEmbeddings(
        **embedded,
        classifier_weight=chosen.weight,
        classifier_bias=chosen.bias,
        logit_scale=chosen.logit_scale,
        fingerprint=gallery.fingerprint,
        images_embedded=images_embedded,
        seconds=time.perf_counter() - started,
        classifier_kind=chosen.kind,
    )


def _embed_splits(gallery: GalleryModel, data: RetrievalData, splits: tuple[str, ...], device: torch.device,
                  batch_size: int, split_embedder: SplitEmbedder | None) -> tuple[dict[str, np.ndarray], int]:
    """The named splits of ``data`` through the gallery model, and how many images it ran on."""
    embedded = {}
    images_embedded = 0
    for split in splits:
        images = getattr(data, split)
        if split_embedder is None:
            start_count = gallery.images_embedded
            embedded[split] = gallery.embed(images.images, [str(i) for i in images.ids], device, batch_size)
            images_embedded += gallery.images_embedded - start_count
        else:
            embedded[split], count = split_embedder(split, images)
            images_embedded += count
        if embedded[split].shape != (len(images), gallery.embed_dim):
            raise ValueError(f"gallery model {gallery.description} returned embeddings of shape "
                             f"{embedded[split].shape} for the {len(images)} {split} images, expected "
                             f"({len(images)}, {gallery.embed_dim})")
    return embedded, images_embedded


@dataclass(frozen=True)
class HeldOutSplits:
    """The held-out query and gallery splits of a search with a validation split
    (``workers.datasets.validation``), with the gallery model's embeddings of both: a trial evaluates
    them once, after its last epoch, for reporting only; nothing is selected on them."""

    query: ImageSet
    gallery: ImageSet
    query_embeddings: np.ndarray  # the gallery model's, for the paragon
    gallery_embeddings: np.ndarray
    images_embedded: int = 0


def embed_held_out(gallery: GalleryModel | GalleryCheckpoint, data: RetrievalData, device: torch.device,
                   batch_size: int = 512, split_embedder: SplitEmbedder | None = None) -> HeldOutSplits:
    """``data``'s query and gallery splits (the held-out ones) through the gallery model, once."""
    if isinstance(gallery, GalleryCheckpoint):
        gallery = CmpnasGalleryModel(gallery)
    embedded, count = _embed_splits(gallery, data, ("query", "gallery"), device, batch_size, split_embedder)
    return HeldOutSplits(data.query, data.gallery, embedded["query"], embedded["gallery"], count)
