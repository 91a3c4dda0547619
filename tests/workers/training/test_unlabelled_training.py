"""Training on the unlabelled pool (data.unlabelled): the label-free losses see its rows without labels,
the losses that need labels refuse them, and each step reads a seeded pool batch beside the labelled one."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from workers.datasets.unlabelled import UNLABELLED
from workers.training.batches import ImageBatches, PooledBatches
from workers.training.fit import OptimSettings, fit
from workers.training.loss_registry import LABEL_FREE_LOSSES, LOSSES
from workers.training.losses import CosineAlignmentLoss, LossContext, UnlabelledBatchError, WeightedLossSum


def context(rows: int, labels: torch.Tensor | None) -> LossContext:
    generator = torch.Generator().manual_seed(0)
    weight = torch.eye(3, 4)
    return LossContext(F.normalize(torch.randn(rows, 4, generator=generator), dim=1), labels,
                       lambda embeddings: embeddings[:, :3] * 5, lambda embeddings: F.linear(embeddings, weight) * 10,
                       F.normalize(torch.randn(rows, 4, generator=generator), dim=1))


def test_the_label_free_losses_are_exactly_those_that_read_no_labels():
    assert sorted(name for name, loss in LOSSES.items() if not loss.uses_labels) == sorted(LABEL_FREE_LOSSES)


@pytest.mark.parametrize("name", ["own_classifier", "bct_influence", "cross_contrastive"])
@pytest.mark.parametrize("labels", [None, torch.tensor([0, 1, UNLABELLED, 2])])
def test_a_loss_that_needs_labels_refuses_pool_rows(name, labels):
    with pytest.raises(UnlabelledBatchError, match=f"loss '{name}' needs labels.*data.unlabelled"):
        LOSSES[name]()(context(4, labels))


class LabelSpy(CosineAlignmentLoss):
    """cosine_alignment that records the labels of each context it is given."""

    def __init__(self):
        super().__init__()
        self.seen: list[torch.Tensor | None] = []

    def forward(self, loss_context: LossContext) -> torch.Tensor:
        self.seen.append(loss_context.labels)
        return super().forward(loss_context)


def test_pool_rows_train_only_the_label_free_losses_without_labels_times_the_unlabelled_weight():
    labels = torch.tensor([0, 1, 2, UNLABELLED, UNLABELLED, UNLABELLED])
    mixed = context(6, labels)
    losses = WeightedLossSum({"own_classifier": 1.0, "cosine_alignment": 10.0}, unlabelled_weight=0.5)
    spy = LabelSpy()
    losses.losses["cosine_alignment"] = spy
    total, parts = losses(mixed)
    labelled, pool = torch.arange(6) < 3, torch.arange(6) >= 3
    cosine = CosineAlignmentLoss()
    expected = (F.cross_entropy(mixed.own_classifier(mixed.query_embeddings[labelled]), labels[labelled])
                + 10.0 * cosine(mixed.rows(labelled, labelled=True)) + 0.5 * 10.0 * cosine(mixed.rows(pool, False)))
    assert total.item() == pytest.approx(expected.item(), rel=1e-6)
    assert set(parts) == {"loss_own_classifier", "loss_cosine_alignment", "unlabelled_loss_cosine_alignment"}
    assert spy.seen[0].tolist() == [0, 1, 2] and spy.seen[1] is None  # the pool rows' context carries no labels
    # Without pool rows the sum is what it always was.
    plain = context(3, labels[:3])
    assert losses(plain)[0].item() == pytest.approx(WeightedLossSum(
        {"own_classifier": 1.0, "cosine_alignment": 10.0})(plain)[0].item(), rel=1e-6)


def pooled(labelled_count: int = 10, pool_count: int = 7, pool_batch: int = 3) -> PooledBatches:
    images = np.arange(labelled_count, dtype=np.uint8).reshape(-1, 1, 1, 1).repeat(2, axis=2).repeat(2, axis=3)
    pool_images = (100 + np.arange(pool_count, dtype=np.uint8)).reshape(-1, 1, 1, 1).repeat(2, 2).repeat(2, 3)
    labelled = ImageBatches(images, np.arange(labelled_count) % 3, torch.device("cpu"), seed=4)
    return PooledBatches(labelled, pool_images, pool_batch)


def test_each_step_appends_a_seeded_pool_batch_that_covers_the_pool_once_per_pass():
    batches = pooled()
    assert batches.epoch_rows == 10 and batches.labels[10:].tolist() == [UNLABELLED] * 7
    steps = [batches.pool_rows(step) for step in range(7)]  # 21 positions: 3 passes over 7 images
    flat = np.concatenate(steps)
    for start in (0, 7, 14):
        assert sorted(flat[start : start + 7].tolist()) == list(range(7))
    assert [rows.tolist() for rows in steps] == [pooled().pool_rows(step).tolist() for step in range(7)]
    rows = batches.batch_rows(torch.tensor([2, 5]), step=1)
    assert rows[:2].tolist() == [2, 5] and (rows[2:] >= 10).all()
    read = batches.read(rows, step=1)
    assert read[:2, 0, 0, 0].tolist() == [2, 5]
    assert read[2:, 0, 0, 0].tolist() == (100 + batches.pool_rows(1)).tolist()


def test_fit_counts_an_epoch_over_the_labelled_rows_and_gives_the_step_every_row():
    batches = pooled(labelled_count=10, pool_count=7, pool_batch=3)
    seen_labels = []
    weight = torch.nn.Parameter(torch.ones(()))

    def step(batch, batch_labels, index):
        seen_labels.append(batch_labels.tolist())
        assert len(batch) == len(batch_labels) == len(index)
        return (weight * batch.float().mean()) ** 2, {}

    fit(torch.nn.ParameterList([weight]), batches, step, OptimSettings(epochs=2, batch_size=4, lr=0.01))
    assert len(seen_labels) == 6  # ceil(10 / 4) steps per epoch, the pool rows not counted
    for labels in seen_labels:
        assert labels[-3:] == [UNLABELLED] * 3 and UNLABELLED not in labels[:-3]
