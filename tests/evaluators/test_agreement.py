"""The label-free neighbour agreement (evaluators.agreement) on real FAISS."""

import numpy as np
import pytest

from evaluators.agreement import agreement_metrics, neighbour_agreement, top_neighbours


def test_top_neighbours_leave_the_image_itself_out():
    rng = np.random.default_rng(0)
    embeddings = rng.normal(size=(30, 6)).astype(np.float32)
    found = top_neighbours(embeddings, embeddings, 4)
    assert found.shape == (30, 4)
    assert not (found == np.arange(30)[:, None]).any()
    scores = embeddings @ embeddings.T
    np.fill_diagonal(scores, -np.inf)
    assert (found == np.argsort(-scores, axis=1)[:, :4]).all()


def test_equal_embeddings_agree_fully_and_a_random_model_hardly():
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(200, 16)).astype(np.float32)
    assert neighbour_agreement(gallery, gallery, k=5) == 100.0
    assert neighbour_agreement(gallery, gallery, k=5, against="query") == 100.0
    assert neighbour_agreement(rng.normal(size=(200, 16)).astype(np.float32), gallery, k=5) < 15


def test_agreement_equals_the_hand_computed_value_on_a_tiny_example():
    gallery = np.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]], dtype=np.float32)
    # The query model embeds image 0 like image 2 and image 3 like image 0; images 1 and 2 as the gallery does.
    query = np.array([[0.0, 1.0], [0.9, 0.1], [0.0, 1.0], [1.0, 0.0]], dtype=np.float32)
    # k = 1, the image itself excluded. Gallery-gallery top-1 by inner product:
    #   0: (1: .9, 2: 0, 3: .1) -> 1    1: (0: .9, 2: .1, 3: .18) -> 0
    #   2: (0: 0, 1: .1, 3: .9) -> 3    3: (0: .1, 1: .18, 2: .9) -> 2
    # Query model's image vs the gallery model's others:
    #   0 = (0, 1): (1: .1, 2: 1, 3: .9) -> 2 (reference 1: miss)
    #   1 = (.9, .1): (0: .9, 2: .1, 3: .18) -> 0 (hit)
    #   2 = (0, 1): (0: 0, 1: .1, 3: .9) -> 3 (hit)
    #   3 = (1, 0): (0: 1, 1: .9, 2: 0) -> 0 (reference 2: miss)
    assert neighbour_agreement(query, gallery, k=1) == pytest.approx(50.0)
    # k = 2: reference sets {1,3}, {0,3}, {3,1}, {2,1}; cross {2,3}, {0,3}, {3,1}, {0,1}: 1 + 2 + 2 + 1 of 8.
    assert neighbour_agreement(query, gallery, k=2) == pytest.approx(100 * 6 / 8)
    metrics = agreement_metrics(query, gallery, 1, ("cross", "homo"))
    assert set(metrics) == {"cross_agreement", "homo_agreement"} and metrics["cross_agreement"] == pytest.approx(50.0)


@pytest.mark.parametrize("k", [0, 4])
def test_a_k_without_enough_other_images_is_refused(k):
    embeddings = np.eye(4, dtype=np.float32)
    with pytest.raises(ValueError, match="k must be in"):
        neighbour_agreement(embeddings, embeddings, k=k)
