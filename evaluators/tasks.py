"""Evaluation tasks: which metrics a search computes, by name, behind one factory.

A task turns (query embeddings, query labels, gallery embeddings, gallery labels) into a flat dict
of metrics named ``{prefix}_{metric}``; the trial calls it with ``cross`` (query model against the
gallery model) and ``homo`` (query model on both sides), the driver with ``paragon``. The search
may optimise any ``cross_`` metric of its task (``searchable_metrics``).

- ``retrieval``: Recall@1, Recall@5, mAP (``evaluators.retrieval``).
- ``verification``: the retrieval metrics plus TAR at FAR 1e-2 and 1e-3 over all probe/enrolled
  pairs and rank-1 identification (``evaluators.verification``); queries are the probes, the
  gallery split the enrolled images.

Queries whose label has no gallery item are left out of R@k, mAP and rank-1 alike (and their
pairs are impostor pairs for TAR@FAR), so rank-1 and R@1 are over the same queries; a task refuses
data where no query has a gallery item of its label. The count of left-out queries is a property
of the data, not of a model: it is not among the metrics (``RetrievalMetrics.queries_without_match``
has it, and the data loader warns about it once).

A task is a class decorated with ``register_task``, registered under its ``name``, the value of
``evaluation.task`` (the rules of names and errors are those of ``search_space.registry``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from functools import cached_property

import numpy as np

from evaluators.retrieval import RetrievalEvaluator
from evaluators.verification import DEFAULT_FARS, VerificationEvaluator
from search_space.registry import Registry

RETRIEVAL_METRICS = ("r1", "r5", "map")


class EvaluationTask(ABC):
    name: str

    @abstractmethod
    def metric_names(self, prefix: str) -> tuple[str, ...]:
        """The names ``evaluate`` returns for ``prefix``."""

    @abstractmethod
    def evaluate(self, query_embeddings: np.ndarray, query_labels: np.ndarray, gallery_embeddings: np.ndarray,
                 gallery_labels: np.ndarray, prefix: str,
                 ids: tuple[np.ndarray, np.ndarray] | None = None) -> dict[str, float]:
        """Called once per scored side (``cross``, ``homo``, ``paragon``, ...); ``ids`` (query ids,
        gallery ids) name the images where the two sides may share some (leave-one-out evaluation):
        a query's own image is then left out of its ranking and pairs."""


TASKS: Registry[type[EvaluationTask]] = Registry(
    "evaluation task", "evaluation.task",
    builtins={"retrieval": "evaluators.tasks", "verification": "evaluators.tasks"})


def register_task(task: type[EvaluationTask]) -> type[EvaluationTask]:
    """Register ``task`` under its ``name``, the value of ``evaluation.task`` that selects it."""
    return TASKS.register()(task)


@register_task
class RetrievalTask(EvaluationTask):
    name = "retrieval"

    @cached_property
    def retrieval(self) -> RetrievalEvaluator:
        # Built on first use: naming metrics (config validation) needs no FAISS.
        return RetrievalEvaluator()

    def metric_names(self, prefix: str) -> tuple[str, ...]:
        return tuple(f"{prefix}_{name}" for name in RETRIEVAL_METRICS)

    def evaluate(self, query_embeddings, query_labels, gallery_embeddings, gallery_labels, prefix, ids=None):
        return self.retrieval.evaluate(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                                       ids).as_dict(prefix)


@register_task
class VerificationTask(RetrievalTask):
    name = "verification"

    def __init__(self, fars: tuple[float, ...] = DEFAULT_FARS):
        self.fars = tuple(fars)

    @cached_property
    def verification(self) -> VerificationEvaluator:
        return VerificationEvaluator(self.retrieval.knn, self.fars)

    def metric_names(self, prefix: str) -> tuple[str, ...]:
        return (*super().metric_names(prefix), *VerificationEvaluator.metric_names(prefix, self.fars))

    def evaluate(self, query_embeddings, query_labels, gallery_embeddings, gallery_labels, prefix, ids=None):
        metrics = super().evaluate(query_embeddings, query_labels, gallery_embeddings, gallery_labels, prefix, ids)
        probe_ids, enrolled_ids = ids if ids is not None else (None, None)
        verification = self.verification.evaluate(query_embeddings, query_labels, gallery_embeddings, gallery_labels,
                                                  probe_ids, enrolled_ids)
        metrics.update(verification.as_dict(prefix))
        return metrics


def list_tasks() -> list[str]:
    return TASKS.names()


def create_task(name: str) -> EvaluationTask:
    return TASKS[name]()


def searchable_metrics(task: str) -> tuple[str, ...]:
    """The cross-model metrics a search on ``task`` can optimise (all to be maximised)."""
    return create_task(task).metric_names("cross")
