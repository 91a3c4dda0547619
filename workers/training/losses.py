"""Compatibility losses: each a small class over one base, combined by weight from the config.

Every loss sees the same ``LossContext`` and takes what it needs from it, so adding a loss is
one class decorated with ``register_loss`` (and, for a built-in, its name declared in
``workers.training.loss_registry``); its ``name`` is the key of ``training.loss_weights`` (the rules
of names and errors are those of ``search_space.registry``). A loss's parameters are
the keyword arguments of its ``__init__``, each with a default, in the manner of
pytorch-metric-learning; ``training.loss_parameters`` sets them by loss name and parameter name.
The formulas are in docs/losses.md.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from search_space.errors import CmpnasError
from workers.training.loss_registry import LABEL_FREE_LOSSES, LOSS_PARAMETERS_FIELD, LOSSES, register_loss


@dataclass
class LossContext:
    """One batch: the candidate's normalised embeddings and what the frozen gallery offers. ``labels``:
    one per row, ``UNLABELLED`` (-1) for a row of the unlabelled pool; None for a batch of pool rows only."""

    query_embeddings: torch.Tensor
    labels: torch.Tensor | None
    own_classifier: Callable[[torch.Tensor], torch.Tensor]
    gallery_classifier: Callable[[torch.Tensor], torch.Tensor]
    gallery_embeddings: torch.Tensor

    def rows(self, mask: torch.Tensor, labelled: bool) -> LossContext:
        """The context of the rows ``mask`` selects; without their labels unless ``labelled``."""
        return LossContext(self.query_embeddings[mask], self.labels[mask] if labelled else None, self.own_classifier,
                           self.gallery_classifier, self.gallery_embeddings[mask])


class UnlabelledBatchError(CmpnasError, ValueError):
    """A loss that needs labels was given rows of the unlabelled pool (``data.unlabelled``)."""


def labels_of(context: LossContext, loss: str) -> torch.Tensor:
    """The batch's labels, for a loss that needs them: refused when the batch has none or holds pool rows."""
    labels = context.labels
    if labels is None or bool((labels < 0).any()):
        raise UnlabelledBatchError(
            f"loss {loss!r} needs labels, but its batch holds images of the unlabelled pool (data.unlabelled): only "
            f"the label-free losses {list(LABEL_FREE_LOSSES)} train on the pool; this is a bug of the caller")
    return labels


class LossParameterError(CmpnasError, ValueError):
    """A loss parameter out of its range; ``parameter`` names it."""

    def __init__(self, parameter: str, message: str):
        super().__init__(message)
        self.parameter = parameter


def positive(parameter: str, value: float) -> float:
    """``value`` as a float when it is finite and > 0, else ``LossParameterError``: for a loss's ``__init__``."""
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise LossParameterError(parameter, f"must be finite and > 0 (got {value!r})")
    return value


class CompatibilityLoss(nn.Module, ABC):
    """Base of all losses: ``forward(context)`` returns a scalar.

    Parameters are keyword arguments of ``__init__`` with defaults; ``__init__`` refuses a value
    out of range with ``LossParameterError``.
    """

    name: str
    # False for a loss that reads no labels: only such losses see the unlabelled pool (data.unlabelled).
    uses_labels: bool = True

    @classmethod
    def parameter_names(cls) -> list[str]:
        """The parameters that ``__init__`` accepts (those ``training.loss_parameters`` may set)."""
        signature = inspect.signature(cls.__init__)
        return [name for name, parameter in signature.parameters.items()
                if name != "self" and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)]

    @abstractmethod
    def forward(self, context: LossContext) -> torch.Tensor: ...


@register_loss
class OwnClassifierLoss(CompatibilityLoss):
    """Cross-entropy of the candidate's own classifier: learns the task, not compatibility."""

    name = "own_classifier"

    def forward(self, context: LossContext) -> torch.Tensor:
        return F.cross_entropy(context.own_classifier(context.query_embeddings), labels_of(context, self.name))


@register_loss
class BCTInfluenceLoss(CompatibilityLoss):
    """BCT influence loss: the candidate's embedding through the frozen gallery classifier."""

    name = "bct_influence"

    def forward(self, context: LossContext) -> torch.Tensor:
        return F.cross_entropy(context.gallery_classifier(context.query_embeddings), labels_of(context, self.name))


@register_loss
class CosineAlignmentLoss(CompatibilityLoss):
    """1 - cosine similarity to the gallery model's embedding of the same image."""

    name = "cosine_alignment"
    uses_labels = False

    def forward(self, context: LossContext) -> torch.Tensor:
        return (1.0 - F.cosine_similarity(context.query_embeddings, context.gallery_embeddings, dim=1)).mean()


def normalised_pair(context: LossContext) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's query and gallery embeddings, L2-normalised, in float32."""
    return (F.normalize(context.query_embeddings.float(), dim=1),
            F.normalize(context.gallery_embeddings.float(), dim=1))


class TemperatureScaledLoss(CompatibilityLoss, ABC):
    """A loss over cosine logits divided by ``temperature`` (its one parameter)."""

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = positive("temperature", temperature)


@register_loss
class CrossContrastiveLoss(TemperatureScaledLoss):
    """Cross-model supervised contrastive (InfoNCE) loss: each query embedding of the batch against
    the gallery embeddings of the batch. Positives: the image's own gallery embedding and those of
    same-class images; both sides L2-normalised; ``temperature`` scales the cosine logits."""

    name = "cross_contrastive"

    def forward(self, context: LossContext) -> torch.Tensor:
        query, gallery = normalised_pair(context)
        log_probability = F.log_softmax(query @ gallery.T / self.temperature, dim=1)
        labels = labels_of(context, self.name)
        positives = (labels[:, None] == labels[None, :]) | torch.eye(len(labels), dtype=torch.bool,
                                                                     device=labels.device)
        per_query = -(log_probability * positives).sum(1) / positives.sum(1)
        return per_query.mean()


@register_loss
class L2RegressionLoss(CompatibilityLoss):
    """Mean squared L2 distance between the normalised query embedding and the normalised gallery
    embedding of the same image (on unit vectors: 2 x ``cosine_alignment``)."""

    name = "l2_regression"
    uses_labels = False

    def forward(self, context: LossContext) -> torch.Tensor:
        query, gallery = normalised_pair(context)
        return (query - gallery).pow(2).sum(1).mean()


@register_loss
class RelationalLoss(TemperatureScaledLoss):
    """Similarity distillation: KL(gallery || query) between the row-softmaxes, at ``temperature``,
    of the two models' pairwise cosine similarities within the batch, the diagonal left out.
    Depends on the query space only through its similarities: a rotation of it changes nothing."""

    name = "relational"
    uses_labels = False

    def forward(self, context: LossContext) -> torch.Tensor:
        query, gallery = normalised_pair(context)
        count = len(query)
        if count < 2:  # no pair to compare
            return query.sum() * 0.0
        off_diagonal = ~torch.eye(count, dtype=torch.bool, device=query.device)
        query_logits = (query @ query.T / self.temperature)[off_diagonal].view(count, count - 1)
        gallery_logits = (gallery @ gallery.T / self.temperature)[off_diagonal].view(count, count - 1)
        return F.kl_div(F.log_softmax(query_logits, dim=1), F.log_softmax(gallery_logits, dim=1),
                        reduction="batchmean", log_target=True)


def loss_parameter_problems(parameters: dict[str, dict[str, float]], field: str = LOSS_PARAMETERS_FIELD
                            ) -> list[str]:
    """What is wrong with ``parameters`` (loss name -> parameter name -> value), each problem naming
    its dotted field (``training.loss_parameters.<loss>.<parameter>``) and what is allowed there."""
    unknown = sorted(set(parameters) - set(LOSSES))
    if unknown:
        return [f"{field}: unknown losses {unknown}; allowed values are {sorted(LOSSES)}"]
    problems = []
    for loss_name, values in parameters.items():
        loss_class = LOSSES[loss_name]
        allowed = loss_class.parameter_names()
        bad_names = sorted(set(values) - set(allowed))
        for parameter in bad_names:
            problems.append(f"{field}.{loss_name}.{parameter}: unknown parameter of loss {loss_name!r}; allowed "
                            f"parameters are {allowed}")
        for parameter, value in values.items():
            if parameter not in bad_names and not (isinstance(value, (int, float)) and math.isfinite(value)):
                problems.append(f"{field}.{loss_name}.{parameter}: must be a finite number (got {value!r})")
        if problems:
            continue
        try:
            loss_class(**values)
        except LossParameterError as error:
            problems.append(f"{field}.{loss_name}.{error.parameter}: {error}")
    return problems


class WeightedLossSum(nn.Module):
    """Sum of the registered losses with non-zero weight; reports each part unweighted.

    ``parameters`` (loss name -> parameter name -> value, as ``training.loss_parameters``) are
    passed to each loss's ``__init__``; a loss or parameter left out takes its default.

    A batch with rows of the unlabelled pool (label ``UNLABELLED``, ``data.unlabelled``): every loss
    is taken over the labelled rows as without a pool; the label-free losses (``uses_labels`` False)
    are also taken over the pool rows, without their labels, and added times their weight times
    ``unlabelled_weight`` (``training.unlabelled_weight``), reported as ``unlabelled_loss_<name>``.
    """

    def __init__(self, weights: dict[str, float], parameters: dict[str, dict[str, float]] | None = None,
                 unlabelled_weight: float = 1.0):
        super().__init__()
        self.unlabelled_weight = float(unlabelled_weight)
        parameters = parameters or {}
        unknown = sorted(set(weights) - set(LOSSES))
        if unknown:
            raise ValueError(f"unknown loss names {unknown}: allowed values are {sorted(LOSSES)}")
        problems = loss_parameter_problems(parameters)
        if problems:
            raise ValueError("; ".join(problems))
        self.weights = {name: float(w) for name, w in weights.items() if w != 0}
        if not self.weights:
            raise ValueError(f"at least one loss weight must be non-zero (losses: {sorted(LOSSES)})")
        self.losses = nn.ModuleDict({name: LOSSES[name](**parameters.get(name, {})) for name in self.weights})

    def forward(self, context: LossContext) -> tuple[torch.Tensor, dict[str, float]]:
        labels = context.labels
        pool_rows = None if labels is None else labels < 0
        if pool_rows is None or not bool(pool_rows.any()):
            return self._labelled(context)
        total, reported = self._labelled(context.rows(~pool_rows, labelled=True))
        pool = context.rows(pool_rows, labelled=False)
        for name, loss in self.losses.items():
            if not loss.uses_labels:
                value = loss(pool)
                total = total + self.unlabelled_weight * self.weights[name] * value
                reported[f"unlabelled_loss_{name}"] = value.item()
        return total, reported

    def _labelled(self, context: LossContext) -> tuple[torch.Tensor, dict[str, float]]:
        parts = {name: loss(context) for name, loss in self.losses.items()}
        total = sum(self.weights[name] * value for name, value in parts.items())
        return total, {f"loss_{name}": value.item() for name, value in parts.items()}
