"""Retrieval accuracy of query embeddings against gallery embeddings (possibly of another model).

Recall@k: the percentage of queries with at least one same-label gallery item among the top k.
mAP: the mean over queries of average precision over the full ranking of the gallery, in percent.

Queries without a relevant item (no gallery item has their label; user-assigned splits can have
them, and open-set galleries of other benchmarks do): as in the In-Shop and Stanford Online
Products protocols, they are left out of every average: R@k and mAP are over the queries that
have at least one relevant gallery item (``num_queries``); the others are counted in
``queries_without_match``. They are not scored as zeros, which would cap R@1 below 100 for
a perfect model. Data where no query has a relevant item is an input error.
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
    num_queries: int  # the queries averaged over: those with at least one relevant gallery item
    num_gallery: int
    queries_without_match: int = 0  # queries left out: no gallery item has their label

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
    """Scores each query's ranking of the gallery, with the scores from a kNN backend's index.

    Every metric here depends only on where the same-label gallery items land in the ranking:
    R@k asks whether the best of them is within the first k, AP averages precision at each of
    them. So the whole gallery is never sorted: per query, the scores of its relevant items and
    of the others are sorted apart, and each relevant item's rank is its place among the relevant
    plus the other items that score strictly higher (equal scores count in the query's favour).
    """

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
        relevant_masks = {label: gallery_labels == label for label in np.unique(query_labels)}
        matched = np.isin(query_labels, gallery_labels)
        if not matched.any():
            missing = sorted(label.item() for label in relevant_masks)
            raise ValueError(f"no query has a relevant gallery item: query labels {missing[:10]} have no item in the "
                             "gallery; split the data so that query classes have gallery images")
        if not matched.all():
            query_embeddings, query_labels = query_embeddings[matched], query_labels[matched]

        hits_at_1 = hits_at_5 = 0
        average_precisions = []
        index = self.knn.build_index(gallery_embeddings)
        for start in range(0, len(query_labels), self.query_chunk):
            stop = start + self.query_chunk
            for scores, label in zip(index.scores(query_embeddings[start:stop]), query_labels[start:stop]):
                ranks = ranks_of_relevant(scores, relevant_masks[label])
                hits_at_1 += int(ranks[0] <= 1)
                hits_at_5 += int(ranks[0] <= 5)
                average_precisions.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
        count = len(query_labels)
        return RetrievalMetrics(
            recall_at_1=100.0 * hits_at_1 / count,
            recall_at_5=100.0 * hits_at_5 / count,
            mean_average_precision=100.0 * float(np.mean(average_precisions)),
            num_queries=count,
            num_gallery=len(gallery_labels),
            queries_without_match=int((~matched).sum()),
        )


def ranks_of_relevant(scores: np.ndarray, relevant: np.ndarray) -> np.ndarray:
    """1-based ranks, best first, of the ``relevant`` items when the gallery is ordered by ``scores``.

    The i-th best relevant item ranks i plus the number of other items scoring strictly higher.
    """
    relevant_scores = -np.sort(-scores[relevant])
    others = np.sort(scores[~relevant])
    higher_others = len(others) - np.searchsorted(others, relevant_scores, side="right")
    return np.arange(1, len(relevant_scores) + 1) + higher_others


def chance_level(measure: str, query_labels: np.ndarray, gallery_labels: np.ndarray) -> float | None:
    """The expected ``measure`` (``r1``, ``r5`` or ``map``, in percent) of a ranking drawn at random,
    for these labels: a query of class c finds a match at a rank with probability f_c, the fraction
    of the gallery in class c (R@1: f_c; R@5: 1 - (1 - f_c)^5; mAP: about f_c, the precision of a
    random ranking). Queries of a class without gallery images are left out, as ``evaluate`` does.
    None for any other measure (its chance level is not known here)."""
    query_labels, gallery_labels = np.asarray(query_labels), np.asarray(gallery_labels)
    if measure not in ("r1", "r5", "map") or len(gallery_labels) == 0:
        return None
    classes, gallery_counts = np.unique(gallery_labels, return_counts=True)
    fraction = dict(zip(classes.tolist(), (gallery_counts / len(gallery_labels)).tolist()))
    per_query = np.array([fraction.get(label, 0.0) for label in query_labels.tolist()])
    per_query = per_query[per_query > 0]
    if len(per_query) == 0:
        return None
    found = 1 - (1 - per_query) ** 5 if measure == "r5" else per_query
    return 100.0 * float(found.mean())
