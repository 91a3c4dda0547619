"""Compatibility is real: BCT training puts the query model in the gallery's embedding space."""

import pytest
import torch

from evaluators import RetrievalEvaluator
from search_space import build_query_model, create_space
from workers.compatibility.candidate import fine_tune_candidate
from workers.compatibility.training import CompatibilityTrainingSettings, TrainingRun
from workers.gallery.embeddings import compute_gallery_embeddings
from workers.gallery.model import load_gallery
from workers.training.fit import OptimSettings
from workers.training.preprocess import ModelInput, embed_images


@pytest.fixture(scope="module")
def gallery_embeddings(gallery_dir, tiny_data):
    checkpoint = load_gallery(gallery_dir / "gallery.safetensors")
    embeddings = compute_gallery_embeddings(checkpoint, tiny_data, torch.device("cpu"))
    assert embeddings.images_embedded == len(tiny_data.train) + len(tiny_data.query) + len(tiny_data.gallery)
    return embeddings


def _cross_r1(tiny_data, gallery_embeddings, loss_weights):
    space = create_space("mnv3_28", embed_dim=gallery_embeddings.embed_dim, in_chans=1)
    spec = space.smallest()
    torch.manual_seed(0)
    model = build_query_model(spec)
    settings = CompatibilityTrainingSettings(OptimSettings(epochs=3, batch_size=128, lr=3e-3), loss_weights)
    fine_tune_candidate(model, spec.resolution, settings, TrainingRun(tiny_data, gallery_embeddings, torch.device("cpu")))
    queries = embed_images(model, tiny_data.query.images, ModelInput(tiny_data.mean, tiny_data.std, spec.resolution))
    return RetrievalEvaluator().evaluate(queries, tiny_data.query.labels, gallery_embeddings.gallery,
                                         tiny_data.gallery.labels).recall_at_1


def test_bct_candidate_is_compatible_and_an_independent_one_is_not(tiny_data, gallery_embeddings):
    paragon = RetrievalEvaluator().evaluate(gallery_embeddings.query, tiny_data.query.labels,
                                            gallery_embeddings.gallery, tiny_data.gallery.labels).recall_at_1
    independent = _cross_r1(tiny_data, gallery_embeddings, {"own_classifier": 1.0})
    compatible = _cross_r1(tiny_data, gallery_embeddings, {"own_classifier": 1.0, "bct_influence": 1.0})
    print(f"paragon R@1 {paragon:.1f}, BCT cross R@1 {compatible:.1f}, independent cross R@1 {independent:.1f}")
    assert paragon > 60
    assert independent < 25, "without compatibility losses cross-model retrieval should be near chance (10%)"
    assert compatible > 50
    assert compatible - independent > 30


def test_the_mean_pairwise_cosine_tells_collapsed_embeddings_apart():
    """Issue 27: a gallery model trained 12 steps embedded 700 digits at mean cosine 0.996, and every
    candidate aligned to it ended at chance; trained 60 steps, 0.08."""
    import numpy as np

    from workers.gallery.embeddings import COLLAPSED_COSINE, GalleryEmbeddings

    def spread(train):
        return GalleryEmbeddings(train, train, train, np.zeros((1, 1)), np.zeros(1), 1.0, "f", 0, 0.0
                                 ).mean_pairwise_cosine(chunk=7)

    rng = np.random.default_rng(0)
    direction = rng.normal(size=16)
    collapsed = direction + 0.05 * rng.normal(size=(50, 16))
    spread_out = rng.normal(size=(50, 16))
    assert spread(collapsed) > COLLAPSED_COSINE > 0.5 > abs(spread(spread_out))
    units = spread_out / np.linalg.norm(spread_out, axis=1, keepdims=True)
    pairwise = units @ units.T
    assert spread(spread_out) == pytest.approx((pairwise.sum() - 50) / (50 * 49))
