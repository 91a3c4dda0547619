import pytest
import torch
import torch.nn.functional as F

from workers.training.loss_registry import DEFAULT_LOSS_WEIGHTS, LOSSES, register_loss
from workers.training.losses import CompatibilityLoss, LossContext, WeightedLossSum


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


def test_the_config_and_the_trainers_default_to_the_same_loss_weights():
    # Candidate and supernet training share one settings class (workers.compatibility.training).
    from orchestrator.config.schema import TrainingConfig
    from workers.compatibility.training import CompatibilityTrainingSettings
    from workers.training.fit import OptimSettings

    optim = OptimSettings(epochs=1, batch_size=1, lr=1e-3)
    assert set(DEFAULT_LOSS_WEIGHTS) <= set(LOSSES)
    assert TrainingConfig().loss_weights == DEFAULT_LOSS_WEIGHTS
    assert CompatibilityTrainingSettings(optim).loss_weights == DEFAULT_LOSS_WEIGHTS


NEW_LOSSES = ("cross_contrastive", "l2_regression", "relational")


def _embeddings(rows=6, dim=4, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(rows, dim, generator=generator), dim=1)


def _rotation(dim=4, seed=1):
    generator = torch.Generator().manual_seed(seed)
    rotation, _ = torch.linalg.qr(torch.randn(dim, dim, generator=generator))
    return rotation


def test_every_registered_loss_builds_with_its_defaults_and_gives_a_finite_scalar_on_a_random_context():
    query = torch.randn(7, 4).requires_grad_()
    context = _context(query, torch.randn(7, 4), torch.randint(0, 3, (7,)))
    for name in LOSSES:
        value = WeightedLossSum({name: 1.0}).losses[name](context)
        assert value.ndim == 0 and torch.isfinite(value), name


def test_the_new_losses_are_registered_and_off_by_default():
    assert set(NEW_LOSSES) <= set(LOSSES)
    assert not set(NEW_LOSSES) & set(DEFAULT_LOSS_WEIGHTS)
    assert LOSSES["cross_contrastive"].parameter_names() == ["temperature"]
    assert LOSSES["relational"].parameter_names() == ["temperature"]
    assert LOSSES["l2_regression"].parameter_names() == []


@pytest.mark.parametrize("name", ["l2_regression", "relational"])
def test_zero_when_the_query_is_the_gallery_and_positive_otherwise(name):
    gallery, labels = _embeddings(), torch.tensor([0, 1, 2, 0, 1, 2])
    loss = LOSSES[name]()
    assert loss(_context(gallery, gallery, labels)).item() == pytest.approx(0, abs=1e-6)
    assert loss(_context(_embeddings(seed=5), gallery, labels)).item() > 1e-3


def test_l2_regression_is_the_squared_distance_of_the_normalised_embeddings():
    query, gallery = torch.randn(5, 4) * 3, torch.randn(5, 4)
    expected = (F.normalize(query, dim=1) - F.normalize(gallery, dim=1)).pow(2).sum(1).mean()
    assert LOSSES["l2_regression"]()(_context(query, gallery, torch.zeros(5, dtype=torch.long))).item() == \
        pytest.approx(expected.item(), rel=1e-5)


def test_cross_contrastive_is_positive_and_decreases_as_the_query_moves_to_its_gallery_embedding():
    gallery, labels = torch.eye(4), torch.arange(4)
    start = _embeddings(rows=4, seed=3)
    loss = LOSSES["cross_contrastive"]()
    values = [loss(_context(F.normalize((1 - t) * start + t * gallery, dim=1), gallery, labels)).item()
              for t in (0.0, 0.25, 0.5, 0.75, 1.0)]
    assert all(value > 0 for value in values)
    assert values == sorted(values, reverse=True) and values[-1] < values[0] - 0.5
    # At the gallery embedding the loss is minimal: any nudge of the query raises it.
    nudged = F.normalize(gallery + 0.1 * _embeddings(rows=4, seed=4), dim=1)
    assert loss(_context(nudged, gallery, labels)) > values[-1]


def test_cross_contrastive_counts_same_class_gallery_embeddings_as_positives():
    gallery = torch.eye(4)
    query = gallery[[1, 0, 2, 3]]  # the first two queries swapped: each on the other image's gallery embedding
    same_class = LOSSES["cross_contrastive"]()(_context(query, gallery, torch.tensor([0, 0, 1, 2])))
    other_class = LOSSES["cross_contrastive"]()(_context(query, gallery, torch.tensor([0, 1, 2, 3])))
    assert same_class < other_class


def test_relational_is_invariant_to_a_rotation_of_the_query_space_and_the_others_are_not():
    query, gallery, labels = _embeddings(seed=2), _embeddings(seed=0), torch.tensor([0, 1, 2, 0, 1, 2])
    rotated = query @ _rotation()
    for name in NEW_LOSSES:
        loss = LOSSES[name]()
        before, after = loss(_context(query, gallery, labels)).item(), loss(_context(rotated, gallery, labels)).item()
        if name == "relational":
            assert after == pytest.approx(before, rel=1e-4, abs=1e-6)
        else:
            assert abs(after - before) > 1e-3, name


@pytest.mark.parametrize("name", NEW_LOSSES)
def test_the_new_losses_are_differentiable(name):
    query = _embeddings(seed=6).requires_grad_()
    value = LOSSES[name]()(_context(query, _embeddings(), torch.tensor([0, 1, 2, 0, 1, 2])))
    (grad,) = torch.autograd.grad(value, query)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0


def test_relational_on_a_batch_of_one_is_zero_and_keeps_the_graph():
    query = _embeddings(rows=1).requires_grad_()
    value = LOSSES["relational"]()(_context(query, _embeddings(rows=1, seed=1), torch.tensor([0])))
    assert value.item() == 0 and value.requires_grad


@pytest.mark.parametrize("name", ["cross_contrastive", "relational"])
def test_parameters_reach_the_loss(name):
    losses = WeightedLossSum({name: 1.0}, {name: {"temperature": 0.5}})
    assert losses.losses[name].temperature == 0.5
    assert WeightedLossSum({name: 1.0}).losses[name].temperature == 0.1
    context = _context(_embeddings(seed=2), _embeddings(), torch.tensor([0, 1, 2, 0, 1, 2]))
    assert losses(context)[0].item() != pytest.approx(WeightedLossSum({name: 1.0})(context)[0].item())


def test_the_trainers_settings_carry_the_loss_parameters_as_keywords():
    from workers.compatibility.training import CompatibilityTrainingSettings
    from workers.training.fit import OptimSettings

    optim = OptimSettings(epochs=1, batch_size=1, lr=1e-3)
    parameters = {"relational": {"temperature": 0.2}}
    assert CompatibilityTrainingSettings(optim).loss_parameters == {}
    assert CompatibilityTrainingSettings(optim, loss_parameters=parameters).loss_parameters == parameters


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"triplet": {"margin": 1.0}}, r"training.loss_parameters: unknown losses \['triplet'\]; allowed values are"),
        ({"relational": {"temp": 1.0}},
         r"training.loss_parameters.relational.temp: unknown parameter .*allowed parameters are \['temperature'\]"),
        ({"l2_regression": {"temperature": 1.0}},
         r"training.loss_parameters.l2_regression.temperature: .*allowed parameters are \[\]"),
        ({"cross_contrastive": {"temperature": 0.0}}, r"training.loss_parameters.cross_contrastive.temperature: .*> 0"),
        ({"relational": {"temperature": float("nan")}}, r"training.loss_parameters.relational.temperature: .*finite"),
    ],
)
def test_bad_parameters_are_refused_naming_the_dotted_field(parameters, expected):
    with pytest.raises(ValueError, match=expected):
        WeightedLossSum({"own_classifier": 1.0}, parameters)
