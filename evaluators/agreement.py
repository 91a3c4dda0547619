"""Label-free validation: how far a query model's neighbours in the gallery space agree with the
gallery model's own neighbours.

The rule (``neighbour_agreement``), on ``n`` images embedded by both models (rows in the same order;
no labels are read, so it runs on unlabelled images):

* the *reference* neighbours of image ``i`` are the ``k`` images ``j != i`` whose gallery-model
  embeddings have the highest inner product with the gallery model's embedding of ``i`` (the ranking
  a deployed gallery gives, as ``evaluators.retrieval`` ranks);
* the *cross-model* neighbours of ``i`` are the ``k`` images ``j != i`` whose gallery-model embeddings
  have the highest inner product with the **query model's** embedding of ``i``: what a query
  embedded by the new model retrieves from the gallery as it is indexed today;
* the agreement of ``i`` is the share of its reference neighbours among its cross-model ones,
  ``|cross(i) & reference(i)| / k``; the score is the mean over images, in percent (0-100).

The image itself is never its own neighbour (it is in the gallery it is searched against). When the
query model's embeddings equal the gallery model's the two neighbour sets are the same ranking and
the score is 100. A random query model scores about ``100 k / (n - 1)``.

``homo`` (``neighbour_agreement`` with ``against="query"``) ranks the ``j`` by the query model's own
embeddings instead: whether the query model keeps the gallery's neighbourhoods in its own space,
whatever its alignment. Ties in a score are broken by FAISS's order, identically for identical rows.
"""

from __future__ import annotations

import numpy as np

from evaluators.knn import FaissInnerProductKNN

DEFAULT_K = 10
# The label-free metric a search may rank on (``search.metric``), whatever its evaluation task.
LABEL_FREE_METRIC = "cross_agreement"


def top_neighbours(queries: np.ndarray, pool: np.ndarray, k: int, knn: FaissInnerProductKNN | None = None
                   ) -> np.ndarray:
    """For row ``i`` of ``queries``, the ``k`` rows ``j != i`` of ``pool`` of highest inner product, best
    first; ``queries`` and ``pool`` describe the same images in the same order."""
    if len(queries) != len(pool):
        raise ValueError(f"queries and pool must describe the same images, got {len(queries)} and {len(pool)} rows")
    if not 1 <= k < len(pool):
        raise ValueError(f"k must be in [1, {len(pool) - 1}] for {len(pool)} images (an image is not its own "
                         f"neighbour), got {k}")
    knn = knn or FaissInnerProductKNN()
    _, found = knn.search(np.ascontiguousarray(queries, dtype=np.float32),
                          np.ascontiguousarray(pool, dtype=np.float32), k + 1)
    rows = np.arange(len(queries))[:, None]
    not_self = found != rows
    # k + 1 found, at most one of them the image itself: keep the first k others of each row.
    keep = np.cumsum(not_self, axis=1) <= k
    return found[not_self & keep].reshape(len(queries), k)


def neighbour_agreement(query_model: np.ndarray, gallery_model: np.ndarray, k: int = DEFAULT_K,
                        against: str = "gallery", knn: FaissInnerProductKNN | None = None) -> float:
    """The module's score in percent: the query model's top-``k`` neighbours of each image (searched among
    the gallery model's embeddings, ``against="gallery"``, or among its own, ``"query"``) that are among
    the gallery model's own top-``k``."""
    if against not in ("gallery", "query"):
        raise ValueError(f"against must be 'gallery' or 'query', got {against!r}")
    if query_model.shape[0] != gallery_model.shape[0]:
        raise ValueError(f"both models must embed the same images, got {len(query_model)} and {len(gallery_model)}")
    knn = knn or FaissInnerProductKNN()
    reference = top_neighbours(gallery_model, gallery_model, k, knn)
    candidate = top_neighbours(query_model, gallery_model if against == "gallery" else query_model, k, knn)
    shared = [np.intersect1d(mine, theirs).size for mine, theirs in zip(candidate, reference)]
    return 100.0 * float(np.mean(shared)) / k


def agreement_metrics(query_model: np.ndarray, gallery_model: np.ndarray, k: int, prefixes: tuple[str, ...],
                      knn: FaissInnerProductKNN | None = None) -> dict[str, float]:
    """``{prefix}_agreement`` for ``cross`` (against the gallery model's embeddings) and ``homo`` (against
    the query model's own), as named in ``prefixes``."""
    against = {"cross": "gallery", "homo": "query"}
    return {f"{prefix}_agreement": neighbour_agreement(query_model, gallery_model, k, against[prefix], knn)
            for prefix in prefixes}
