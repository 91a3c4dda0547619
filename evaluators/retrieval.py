"""Retrieval accuracy of query embeddings against gallery embeddings (possibly of another model).

Recall@k: the percentage of queries with at least one same-label gallery item among the top k.
mAP: the mean over queries of average precision over the full ranking of the gallery, in percent.

Queries without a relevant item (no gallery item has their label; user-assigned splits can have
them, and open-set galleries of other benchmarks do): as in the In-Shop and Stanford Online
Products protocols, they are left out of every average: R@k and mAP are over the queries that
have at least one relevant gallery item (``num_queries``); the others are counted in
``queries_without_match``. They are not scored as zeros, which would cap R@1 below 100 for
a perfect model. Data where no query has a relevant item is an input error.

Identical images: when query and gallery share images (``query_ids``/``gallery_ids`` name them; in
leave-one-out evaluation every query is also a gallery item), a query's own image is left out of
its ranking, as ``evaluators.verification`` leaves identical-image pairs out: an image found by
itself says nothing. A query whose only same-label gallery item is itself then has no relevant item.

``per_query`` gives each query's outcome (rank of its first relevant item, its average precision),
from which the metrics are averages: ``evaluators.intervals`` resamples them for confidence intervals.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from evaluators.knn import FaissInnerProductKNN


@dataclass(frozen=True)
class QueryOutcomes:
    """Per scored query (those with a relevant gallery item), in query order."""

    first_relevant_rank: np.ndarray  # 1-based rank of the best-placed same-label gallery item
    average_precision: np.ndarray  # in [0, 1]
    num_gallery: int
    queries_without_match: int

    def recall_hits(self, k: int) -> np.ndarray:
        """1.0 where the query finds a same-label item in its top ``k``, else 0.0."""
        return (self.first_relevant_rank <= k).astype(np.float64)

    def metrics(self) -> RetrievalMetrics:
        return RetrievalMetrics(
            recall_at_1=100.0 * float(self.recall_hits(1).mean()),
            recall_at_5=100.0 * float(self.recall_hits(5).mean()),
            mean_average_precision=100.0 * float(self.average_precision.mean()),
            num_queries=len(self.first_relevant_rank),
            num_gallery=self.num_gallery,
            queries_without_match=self.queries_without_match,
        )


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
        ids: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> RetrievalMetrics:
        """The metrics over the scored queries; ``ids``: (query ids, gallery ids), identical images excluded."""
        return self.per_query(query_embeddings, query_labels, gallery_embeddings, gallery_labels, ids).metrics()

    def per_query(
        self,
        query_embeddings: np.ndarray,
        query_labels: np.ndarray,
        gallery_embeddings: np.ndarray,
        gallery_labels: np.ndarray,
        ids: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> QueryOutcomes:
        """Each scored query's outcome (see ``evaluate``)."""
        query_labels = np.asarray(query_labels)
        gallery_labels = np.asarray(gallery_labels)
        if len(query_embeddings) != len(query_labels) or len(gallery_embeddings) != len(gallery_labels):
            raise ValueError("every embedding needs exactly one label")
        if len(query_labels) == 0 or len(gallery_labels) == 0:
            raise ValueError("retrieval needs at least one query and one gallery item")
        own_items = _own_gallery_items(ids, len(query_labels), len(gallery_labels))
        relevant_masks = {label: gallery_labels == label for label in np.unique(query_labels)}
        first_ranks, average_precisions = [], []
        index = self.knn.build_index(gallery_embeddings)
        for start in range(0, len(query_labels), self.query_chunk):
            stop = start + self.query_chunk
            chunk_scores = index.scores(query_embeddings[start:stop])
            for position, (scores, label) in enumerate(zip(chunk_scores, query_labels[start:stop]), start):
                relevant = relevant_masks[label]
                if own_items[position].size:
                    scores, relevant = np.delete(scores, own_items[position]), np.delete(relevant, own_items[position])
                if not relevant.any():
                    continue
                ranks = ranks_of_relevant(scores, relevant)
                first_ranks.append(int(ranks[0]))
                average_precisions.append(float(np.mean(np.arange(1, len(ranks) + 1) / ranks)))
        if not first_ranks:
            missing = sorted(label.item() for label in relevant_masks)
            raise ValueError(f"no query has a relevant gallery item: query labels {missing[:10]} have no item in the "
                             "gallery; split the data so that query classes have gallery images")
        return QueryOutcomes(np.asarray(first_ranks), np.asarray(average_precisions), len(gallery_labels),
                             len(query_labels) - len(first_ranks))


def _own_gallery_items(ids: tuple[np.ndarray, np.ndarray] | None, queries: int, gallery: int) -> list[np.ndarray]:
    """Per query, the gallery positions holding the same image (none without ``ids``)."""
    none = np.empty(0, dtype=np.int64)
    if ids is None:
        return [none] * queries
    query_ids, gallery_ids = (np.asarray(side) for side in ids)
    if len(query_ids) != queries or len(gallery_ids) != gallery:
        raise ValueError("give one id per query and one per gallery item")
    positions: dict[object, list[int]] = {}
    for position, image_id in enumerate(gallery_ids.tolist()):
        positions.setdefault(image_id, []).append(position)
    return [np.asarray(positions[image_id]) if image_id in positions else none for image_id in query_ids.tolist()]


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
