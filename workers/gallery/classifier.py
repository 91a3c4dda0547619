"""The frozen classifier that the BCT influence loss applies to query embeddings, chosen once per search.

A production embedding model usually has no classifier for the user's classes, so one is built
from the gallery model's own (frozen, L2-normalised) embeddings of the train split
(``gallery.classifier``):

- ``prototypes``: each class's mean embedding, normalised: logits are ``s`` times the cosine to
  each class prototype. Closed form, no hyperparameters, the same for any seed.
- ``linear_probe``: a linear layer fitted once on the frozen embeddings (full-batch L-BFGS on the
  cross-entropy with a small L2 penalty, started from the prototypes).
- ``from_model``: the gallery model's own classifier, where it has one for these classes (a
  cmpnas-trained gallery model).
- ``auto``: ``from_model`` where there is one, else ``prototypes`` (see docs/benchmarks.md,
  "Your own gallery model", for the two built classifiers side by side).

``s`` (``LOGIT_SCALE``) is the cmpnas gallery model's own logit scale, so built and trained
classifiers give the loss the same temperature.

Classes without train images (``data.protocol: open_set``, where every query/gallery class is
one; or a class whose images all went elsewhere): the built classifiers keep ``num_classes``
rows, so labels index them as everywhere else, but such a class gets a zero weight row and the
bias ``ABSENT_CLASS_BIAS``: its logit is far below any reachable one (``|s * cos| <= s``), so it
takes no probability mass and is never a target, and the classifier is the one over the train
classes alone. The probe is fitted over the train classes only. A train split without images is
refused. ``from_model`` gives the model's own classifier unchanged: its rows of classes it never
saw are as its training left them.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from workers.gallery.sources import FrozenClassifier, GalleryModel, GallerySourceError

LOGIT_SCALE = 16.0
CLASSIFIER_KINDS = ("auto", "from_model", "prototypes", "linear_probe")
PROBE_L2 = 1e-4
PROBE_ITERATIONS = 100
ABSENT_CLASS_BIAS = -1e4  # finite, so no inf - inf; exp(-1e4 + 16) is 0 in float32 and float16 alike


def choose_classifier(kind: str, gallery: GalleryModel, train_embeddings: np.ndarray, train_labels: np.ndarray,
                      num_classes: int) -> FrozenClassifier:
    """The classifier ``gallery.classifier`` asks for, over L2-normalised ``train_embeddings``."""
    if kind not in CLASSIFIER_KINDS:
        raise GallerySourceError(f"unknown gallery.classifier {kind!r}; allowed values are {list(CLASSIFIER_KINDS)}")
    if kind in ("auto", "from_model"):
        own = gallery.own_classifier(num_classes)
        if own is not None:
            return own
        if kind == "from_model":
            raise GallerySourceError(
                f"gallery.classifier='from_model': the gallery model {gallery.description} has no classifier for "
                f"these {num_classes} classes; use 'prototypes' or 'linear_probe', built from its embeddings"
            )
        kind = "prototypes"
    if kind == "prototypes":
        return class_prototypes(train_embeddings, train_labels, num_classes)
    return linear_probe(train_embeddings, train_labels, num_classes)


def class_prototypes(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> FrozenClassifier:
    """Each train class's normalised mean embedding; classes without train images as the module says."""
    present = _present_classes(labels, num_classes)
    sums = np.zeros((num_classes, embeddings.shape[1]), dtype=np.float64)
    np.add.at(sums, labels, embeddings)
    prototypes = sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(min=1e-12)
    bias = np.where(present, 0.0, ABSENT_CLASS_BIAS).astype(np.float32)
    return FrozenClassifier(prototypes.astype(np.float32), bias, LOGIT_SCALE, "prototypes")


def linear_probe(embeddings: np.ndarray, labels: np.ndarray, num_classes: int) -> FrozenClassifier:
    """A linear layer fitted over the train classes, started from their prototypes; absent classes: module rules."""
    start = class_prototypes(embeddings, labels, num_classes)
    present = np.flatnonzero(_present_classes(labels, num_classes))
    position = np.full(num_classes, -1)
    position[present] = np.arange(len(present))
    inputs = LOGIT_SCALE * torch.as_tensor(embeddings, dtype=torch.float32)
    targets = torch.as_tensor(position[labels], dtype=torch.long)
    weight = torch.tensor(start.weight[present], requires_grad=True)
    bias = torch.zeros(len(present), requires_grad=True)
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=PROBE_ITERATIONS, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(F.linear(inputs, weight, bias), targets) + PROBE_L2 * weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    full_weight, full_bias = start.weight.copy(), start.bias.copy()
    full_weight[present] = weight.detach().numpy()
    full_bias[present] = bias.detach().numpy()
    return FrozenClassifier(full_weight, full_bias, LOGIT_SCALE, "linear_probe")


def _present_classes(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Which classes have train images, as a boolean mask; a train split without images is refused."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=num_classes)
    if len(counts) > num_classes:
        raise GallerySourceError(f"train labels go up to {len(counts) - 1}, but there are {num_classes} classes")
    if counts.sum() == 0:
        raise GallerySourceError("the train split has no images, so no gallery classifier can be built from it: "
                                 "give the data a train split")
    return counts > 0
