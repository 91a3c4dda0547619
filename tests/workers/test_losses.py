import pytest
import torch
import torch.nn.functional as F

from workers.losses import DEFAULT_LOSS_WEIGHTS, LOSSES, CompatibilityLoss, LossContext, WeightedLossSum, register_loss


def _context(query, gallery_embeddings, labels):
    weight = torch.eye(3, 4)
    return LossContext(
        query_embeddings=query,
        labels=labels,
        own_classifier=lambda e: e[:, :3] * 5,
        gallery_classifier=lambda e: F.linear(e, weight) * 10,
        gallery_embeddings=gallery_embeddings,
    )


def test_every_registered_loss_is_a_scalar_with_gradients():
    query = F.normalize(torch.randn(5, 4), dim=1).requires_grad_()
    context = _context(query, F.normalize(torch.randn(5, 4), dim=1), torch.randint(0, 3, (5,)))
    for name, loss_class in LOSSES.items():
        value = loss_class()(context)
        assert value.ndim == 0 and torch.isfinite(value), name
        (grad,) = torch.autograd.grad(value, query)
        assert grad.abs().sum() > 0, name


def test_cosine_alignment_is_zero_when_aligned_and_bct_prefers_the_gallery_class():
    gallery = F.normalize(torch.randn(4, 4), dim=1)
    labels = torch.tensor([0, 1, 2, 0])
    assert LOSSES["cosine_alignment"]()(_context(gallery, gallery, labels)).item() == pytest.approx(0, abs=1e-6)
    right = LOSSES["bct_influence"]()(_context(torch.eye(4)[labels], gallery, labels))
    wrong = LOSSES["bct_influence"]()(_context(torch.eye(4)[(labels + 1) % 3], gallery, labels))
    assert right < wrong


def test_weighted_sum_uses_only_non_zero_weights_and_rejects_unknown_names():
    losses = WeightedLossSum({"own_classifier": 1.0, "bct_influence": 0.0})
    assert list(losses.losses) == ["own_classifier"]
    with pytest.raises(ValueError, match="allowed values"):
        WeightedLossSum({"triplet": 1.0})
    with pytest.raises(ValueError, match="non-zero"):
        WeightedLossSum({"own_classifier": 0.0})


def test_a_second_loss_of_a_registered_name_is_refused():
    class AnotherBCT(CompatibilityLoss):
        name = "bct_influence"

        def forward(self, context):
            return context.query_embeddings.sum()

    with pytest.raises(ValueError, match="loss 'bct_influence' is registered twice"):
        register_loss(AnotherBCT)
    assert LOSSES["bct_influence"] is not AnotherBCT


def test_the_config_and_both_trainers_default_to_the_same_loss_weights():
    from orchestrator.config import TrainingConfig
    from workers.candidate_training import CandidateTrainingSettings
    from workers.fit import OptimSettings
    from workers.supernet_training import SupernetTrainingSettings

    optim = OptimSettings(epochs=1, batch_size=1, lr=1e-3)
    assert set(DEFAULT_LOSS_WEIGHTS) <= set(LOSSES)
    assert TrainingConfig().loss_weights == DEFAULT_LOSS_WEIGHTS
    assert CandidateTrainingSettings(optim).loss_weights == DEFAULT_LOSS_WEIGHTS
    assert SupernetTrainingSettings(optim).loss_weights == DEFAULT_LOSS_WEIGHTS
