"""Retrieval accuracy of query embeddings against gallery embeddings (possibly of another model).

Recall@k: the percentage of queries with at least one same-label gallery item among the top k.
mAP: the mean over queries of average precision over the full ranking of the gallery, in percent.
Queries without any same-label gallery item are an input error, not a zero.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from evaluators.knn import FaissInnerProductKNN


@dataclass(frozen=True)
class RetrievalMetrics:
    recall_at_1: float
    recall_at_5: float
    mean_average_precision: float
    num_queries: int
    num_gallery: int

    def as_dict(self, prefix: str) -> dict[str, float]:
        """Short MLflow-style names: ``{prefix}_r1``, ``{prefix}_r5``, ``{prefix}_map``."""
        return {
            f"{prefix}_r1": self.recall_at_1,
            f"{prefix}_r5": self.recall_at_5,
            f"{prefix}_map": self.mean_average_precision,
        }

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


class RetrievalEvaluator:
    """Ranks the gallery for each query through a kNN backend and scores the ranking."""

    def __init__(self, knn: FaissInnerProductKNN | None = None, query_chunk: int = 512):
        self.knn = knn or FaissInnerProductKNN()
        self.query_chunk = query_chunk

    def evaluate(
        self,
        query_embeddings: np.ndarray,
        query_labels: np.ndarray,
        gallery_embeddings: np.ndarray,
        gallery_labels: np.ndarray,
    ) -> RetrievalMetrics:
        query_labels = np.asarray(query_labels)
        gallery_labels = np.asarray(gallery_labels)
        if len(query_embeddings) != len(query_labels) or len(gallery_embeddings) != len(gallery_labels):
            raise ValueError("every embedding needs exactly one label")
        if len(query_labels) == 0 or len(gallery_labels) == 0:
            raise ValueError("retrieval needs at least one query and one gallery item")
        gallery_counts = dict(zip(*np.unique(gallery_labels, return_counts=True)))
        relevant = np.array([gallery_counts.get(label, 0) for label in query_labels])
        if (relevant == 0).any():
            missing = sorted(set(query_labels[relevant == 0].tolist()))
            raise ValueError(f"query labels {missing[:10]} have no item in the gallery; split the data so they do")

        hits_at_1 = hits_at_5 = 0
        average_precisions = []
        index = self.knn.build_index(gallery_embeddings)
        for start in range(0, len(query_labels), self.query_chunk):
            stop = start + self.query_chunk
            _, ranking = index.search(query_embeddings[start:stop], len(gallery_labels))
            hits = gallery_labels[ranking] == query_labels[start:stop, None]
            hits_at_1 += int(hits[:, :1].any(axis=1).sum())
            hits_at_5 += int(hits[:, :5].any(axis=1).sum())
            average_precisions.append(_average_precision(hits, relevant[start:stop]))
        count = len(query_labels)
        return RetrievalMetrics(
            recall_at_1=100.0 * hits_at_1 / count,
            recall_at_5=100.0 * hits_at_5 / count,
            mean_average_precision=100.0 * float(np.concatenate(average_precisions).mean()),
            num_queries=count,
            num_gallery=len(gallery_labels),
        )


def _average_precision(hits: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """AP per row of a full ranking: mean of precision@rank over the ranks of relevant items."""
    ranks = np.arange(1, hits.shape[1] + 1)
    precision_at_hits = np.cumsum(hits, axis=1) / ranks * hits
    return precision_at_hits.sum(axis=1) / relevant
