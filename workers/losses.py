"""Compatibility losses: each a small class over one base, combined by weight from the config.

Every loss sees the same ``LossContext`` and takes what it needs from it, so adding a loss is
one class decorated with ``register_loss``; its ``name`` is the key of ``training.loss_weights``
(the rules of names and errors are those of ``search_space.registry``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from search_space.registry import Registry

# One default for the config and the trainers alike, so that a trainer called directly (a bench
# script, a test) trains as a search does.
DEFAULT_LOSS_WEIGHTS = {"own_classifier": 1.0, "bct_influence": 1.0, "cosine_alignment": 10.0}


@dataclass
class LossContext:
    """One batch: the candidate's normalised embeddings and what the frozen gallery offers."""

    query_embeddings: torch.Tensor
    labels: torch.Tensor
    own_classifier: Callable[[torch.Tensor], torch.Tensor]
    gallery_classifier: Callable[[torch.Tensor], torch.Tensor]
    gallery_embeddings: torch.Tensor


class CompatibilityLoss(nn.Module, ABC):
    """Base of all losses: ``forward(context)`` returns a scalar."""

    name: str

    @abstractmethod
    def forward(self, context: LossContext) -> torch.Tensor: ...


LOSSES: Registry[type[CompatibilityLoss]] = Registry("loss", "training.loss_weights")


def register_loss(loss: type[CompatibilityLoss]) -> type[CompatibilityLoss]:
    """Register ``loss`` under its ``name``, the key that ``training.loss_weights`` gives it a weight by."""
    return LOSSES.register()(loss)


@register_loss
class OwnClassifierLoss(CompatibilityLoss):
    """Cross-entropy of the candidate's own classifier: learns the task, not compatibility."""

    name = "own_classifier"

    def forward(self, context: LossContext) -> torch.Tensor:
        return F.cross_entropy(context.own_classifier(context.query_embeddings), context.labels)


@register_loss
class BCTInfluenceLoss(CompatibilityLoss):
    """BCT influence loss: the candidate's embedding through the frozen gallery classifier."""

    name = "bct_influence"

    def forward(self, context: LossContext) -> torch.Tensor:
        return F.cross_entropy(context.gallery_classifier(context.query_embeddings), context.labels)


@register_loss
class CosineAlignmentLoss(CompatibilityLoss):
    """1 - cosine similarity to the gallery model's embedding of the same image."""

    name = "cosine_alignment"

    def forward(self, context: LossContext) -> torch.Tensor:
        return (1.0 - F.cosine_similarity(context.query_embeddings, context.gallery_embeddings, dim=1)).mean()


class WeightedLossSum(nn.Module):
    """Sum of the registered losses with non-zero weight; reports each part unweighted."""

    def __init__(self, weights: dict[str, float]):
        super().__init__()
        unknown = sorted(set(weights) - set(LOSSES))
        if unknown:
            raise ValueError(f"unknown loss names {unknown}: allowed values are {sorted(LOSSES)}")
        self.weights = {name: float(w) for name, w in weights.items() if w != 0}
        if not self.weights:
            raise ValueError(f"at least one loss weight must be non-zero (losses: {sorted(LOSSES)})")
        self.losses = nn.ModuleDict({name: LOSSES[name]() for name in self.weights})

    def forward(self, context: LossContext) -> tuple[torch.Tensor, dict[str, float]]:
        parts = {name: loss(context) for name, loss in self.losses.items()}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, {f"loss_{name}": value.item() for name, value in parts.items()}
