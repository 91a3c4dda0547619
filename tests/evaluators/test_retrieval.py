import numpy as np
import pytest

from evaluators import FaissInnerProductKNN, RetrievalEvaluator


def _unit(rows):
    rows = np.asarray(rows, dtype=np.float32)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_hand_made_ranking_gives_known_recall_and_map():
    gallery = _unit([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]])
    gallery_labels = np.array([0, 1, 1, 0])
    queries = _unit([[1, 0.05], [0.05, 1]])
    query_labels = np.array([0, 0])
    metrics = RetrievalEvaluator().evaluate(queries, query_labels, gallery, gallery_labels)
    # query 0 ranks gallery 0,1,3,2: hits at ranks 1 and 3 -> AP = (1/1 + 2/3) / 2
    # query 1 ranks gallery 2,3,1,0: hits at ranks 2 and 4 -> AP = (1/2 + 2/4) / 2
    assert metrics.recall_at_1 == pytest.approx(50.0)
    assert metrics.recall_at_5 == pytest.approx(100.0)
    assert metrics.mean_average_precision == pytest.approx(100 * ((1 + 2 / 3) / 2 + (0.5 + 0.5) / 2) / 2)


def test_matches_brute_force_numpy_on_random_data():
    rng = np.random.default_rng(0)
    gallery, queries = _unit(rng.normal(size=(300, 16))), _unit(rng.normal(size=(70, 16)))
    gallery_labels, query_labels = rng.integers(0, 5, 300), rng.integers(0, 5, 70)
    metrics = RetrievalEvaluator(query_chunk=16).evaluate(queries, query_labels, gallery, gallery_labels)
    order = np.argsort(-(queries @ gallery.T), axis=1, kind="stable")
    hits = gallery_labels[order] == query_labels[:, None]
    ap = [np.mean([(h[: i + 1].sum()) / (i + 1) for i in np.flatnonzero(h)]) for h in hits]
    assert metrics.recall_at_1 == pytest.approx(100 * hits[:, 0].mean())
    assert metrics.recall_at_5 == pytest.approx(100 * hits[:, :5].any(axis=1).mean())
    assert metrics.mean_average_precision == pytest.approx(100 * np.mean(ap), abs=1e-4)


def test_query_label_missing_from_gallery_is_an_error():
    with pytest.raises(ValueError, match="no item in the gallery"):
        RetrievalEvaluator().evaluate(_unit([[1, 0]]), np.array([3]), _unit([[1, 0]]), np.array([1]))


def test_knn_backend_falls_back_to_cpu_without_a_gpu():
    knn = FaissInnerProductKNN()
    assert knn.device in ("cpu", "gpu")
    scores, indices = knn.search(_unit([[1, 0]]), _unit([[0, 1], [1, 0]]), k=5)
    assert indices.tolist() == [[1, 0]]
    assert scores[0, 0] == pytest.approx(1.0)


def test_an_index_built_once_answers_every_batch_as_a_fresh_search_would():
    rng = np.random.default_rng(1)
    gallery, queries = _unit(rng.normal(size=(200, 8))), _unit(rng.normal(size=(50, 8)))
    knn = FaissInnerProductKNN(use_gpu=False)
    index = knn.build_index(gallery)
    expected = knn.search(queries, gallery, k=10)[1]
    batches = [index.search(queries[start:start + 16], k=10)[1] for start in range(0, 50, 16)]
    assert np.array_equal(np.concatenate(batches), expected)
    gallery[:] = 0  # the index holds its own copy
    assert np.array_equal(index.search(queries, k=10)[1], expected)
    with pytest.raises(ValueError, match="same width"):
        index.search(queries[:, :4], k=3)


def test_a_full_ranking_orders_the_whole_gallery_as_faiss_top_k_does_with_ties_in_gallery_order():
    rng = np.random.default_rng(2)
    gallery, queries = _unit(rng.normal(size=(120, 8))), _unit(rng.normal(size=(30, 8)))
    index = FaissInnerProductKNN(use_gpu=False).build_index(gallery)
    scores, ranking = index.search(queries, k=10_000)  # more than the gallery: every row, ranked
    assert ranking.shape == (30, 120) and np.all(np.diff(scores, axis=1) <= 0)
    top_scores, top = index.search(queries, k=100)  # FAISS's k-selection
    assert np.array_equal(ranking[:, :100], top)
    np.testing.assert_allclose(scores[:, :100], top_scores, atol=1e-6)
    exact = FaissInnerProductKNN(use_gpu=False).build_index(np.array([[0, 1], [1, 0], [0, 1], [1, 0]], np.float32))
    assert exact.search(np.array([[1, 0]], np.float32), k=4)[1].tolist() == [[1, 3, 0, 2]]


def _at_angles(degrees):
    radians = np.deg2rad(np.asarray(degrees, dtype=np.float64))
    return np.stack([np.cos(radians), np.sin(radians)], axis=1).astype(np.float32)


def test_open_set_queries_are_scored_by_label_and_queries_without_a_relevant_item_are_left_out():
    # Unseen classes 5, 6, 7 in the gallery; a query of train class 2 has no gallery item.
    gallery, gallery_labels = _at_angles([0, 10, 90, 100, 180]), np.array([5, 6, 6, 7, 5])
    queries, query_labels = _at_angles([4, 96, 170]), np.array([6, 7, 2])
    metrics = RetrievalEvaluator().evaluate(queries, query_labels, gallery, gallery_labels)
    # Query at 4 deg ranks 0, 10, 90, 100, 180: its class-6 items at ranks 2 and 3 -> AP (1/2 + 2/3) / 2.
    # Query at 96 deg ranks 100 (class 7) first -> AP 1. The class-2 query is left out, not a zero.
    assert metrics.recall_at_1 == pytest.approx(50.0)
    assert metrics.recall_at_5 == pytest.approx(100.0)
    assert metrics.mean_average_precision == pytest.approx(100 * ((1 / 2 + 2 / 3) / 2 + 1) / 2)
    assert (metrics.num_queries, metrics.queries_without_match, metrics.num_gallery) == (2, 1, 5)
    assert metrics.to_dict()["queries_without_match"] == 1
    assert set(metrics.as_dict("cross")) == {"cross_r1", "cross_r5", "cross_map"}


def test_leaving_out_unmatched_queries_equals_evaluating_the_matched_ones_alone():
    rng = np.random.default_rng(3)
    gallery, queries = _unit(rng.normal(size=(60, 8))), _unit(rng.normal(size=(40, 8)))
    gallery_labels, query_labels = rng.integers(0, 4, 60), rng.integers(0, 6, 40)  # labels 4, 5: no gallery item
    evaluator = RetrievalEvaluator(query_chunk=7)
    metrics = evaluator.evaluate(queries, query_labels, gallery, gallery_labels)
    matched = query_labels < 4
    alone = evaluator.evaluate(queries[matched], query_labels[matched], gallery, gallery_labels)
    assert 0 < metrics.queries_without_match == int((~matched).sum())
    assert metrics.num_queries == alone.num_queries == int(matched.sum())
    assert metrics.recall_at_1 == alone.recall_at_1 and metrics.mean_average_precision == alone.mean_average_precision


def test_no_query_with_a_relevant_item_is_an_error_naming_the_labels():
    with pytest.raises(ValueError, match=r"no query has a relevant gallery item: query labels \[3, 4\]"):
        RetrievalEvaluator().evaluate(_unit([[1, 0], [0, 1]]), np.array([4, 3]), _unit([[1, 0]]), np.array([1]))


def _leave_one_out_by_brute_force(embeddings, labels):
    """R@1 and mAP with each item a query against all the others, computed without FAISS."""
    similarity = embeddings @ embeddings.T
    hits, aps = [], []
    for query in range(len(labels)):
        others = np.delete(np.arange(len(labels)), query)
        order = others[np.argsort(-similarity[query, others], kind="stable")]
        relevant = labels[order] == labels[query]
        if not relevant.any():
            continue
        hits.append(float(relevant[0]))
        positions = np.flatnonzero(relevant) + 1
        aps.append(float(np.mean(np.arange(1, len(positions) + 1) / positions)))
    return 100 * np.mean(hits), 100 * np.mean(aps), len(labels) - len(hits)


def test_leave_one_out_leaves_each_query_out_of_its_own_ranking():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 4, 60)
    labels[0] = 9  # a class of one image: as a query it has no other relevant item
    embeddings = rng.normal(size=(60, 8)).astype(np.float32)
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    ids = np.array([f"img{index}" for index in range(60)])
    metrics = RetrievalEvaluator().evaluate(embeddings, labels, embeddings, labels, (ids, ids))
    r1, average_precision, unmatched = _leave_one_out_by_brute_force(embeddings, labels)
    assert metrics.recall_at_1 == pytest.approx(r1) and metrics.mean_average_precision == pytest.approx(average_precision)
    assert metrics.queries_without_match == unmatched == 1 and metrics.num_queries == 59
    # Without ids every query finds itself first: R@1 100, the optimistic reading leave-one-out avoids.
    assert RetrievalEvaluator().evaluate(embeddings, labels, embeddings, labels).recall_at_1 == 100.0


def test_per_query_outcomes_average_to_the_metrics():
    rng = np.random.default_rng(4)
    queries, gallery = rng.normal(size=(30, 6)).astype(np.float32), rng.normal(size=(50, 6)).astype(np.float32)
    query_labels, gallery_labels = rng.integers(0, 3, 30), rng.integers(0, 3, 50)
    outcomes = RetrievalEvaluator().per_query(queries, query_labels, gallery, gallery_labels)
    metrics = RetrievalEvaluator().evaluate(queries, query_labels, gallery, gallery_labels)
    assert 100 * outcomes.recall_hits(1).mean() == pytest.approx(metrics.recall_at_1)
    assert 100 * outcomes.recall_hits(5).mean() == pytest.approx(metrics.recall_at_5)
    assert 100 * outcomes.average_precision.mean() == pytest.approx(metrics.mean_average_precision)


def test_ids_must_match_the_sides_they_name():
    embeddings = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="one id per query"):
        RetrievalEvaluator().evaluate(embeddings, np.arange(4), embeddings, np.arange(4), (np.arange(3), np.arange(4)))


def test_the_chance_level_of_a_random_ranking():
    from evaluators import chance_level

    balanced = np.repeat(np.arange(10), 20)
    assert chance_level("r1", balanced, balanced) == pytest.approx(10.0)
    assert chance_level("map", balanced, balanced) == pytest.approx(10.0)
    assert chance_level("r5", balanced, balanced) == pytest.approx(100 * (1 - 0.9 ** 5))
    # Queries of a class the gallery lacks are left out, as the evaluator does.
    assert chance_level("r1", np.array([0, 0, 5]), np.array([0, 1, 1, 1])) == pytest.approx(25.0)
    assert chance_level("tar_far_1e-2", balanced, balanced) is None
