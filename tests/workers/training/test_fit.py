import torch
from torch import nn

from workers.training.fit import EpochHooks, OptimSettings, fit


class TensorBatches:
    """fit's BatchReader over tensors already in memory."""

    def __init__(self, inputs, labels):
        self.inputs, self.labels = inputs, labels

    def read(self, index, step):
        return self.inputs[index]


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    inputs, labels = torch.randn(64, 4), torch.randint(0, 3, (64,))

    def step(batch, batch_labels, _index):
        return nn.functional.cross_entropy(model(batch), batch_labels), {}

    return model, TensorBatches(inputs, labels), step


SETTINGS = OptimSettings(epochs=3, batch_size=16, lr=1e-2)


class _Stop(Exception):
    pass


def _stop_after(epoch, last):
    if epoch == last:
        raise _Stop


def test_resuming_from_a_saved_state_continues_exactly():
    straight, batches, step = _problem()
    history = fit(straight, batches, step, SETTINGS)
    assert len(history) == 3 and all(stats["loss"] > 0 for stats in history)

    model, batches, step = _problem()
    saved = []
    try:
        fit(model, batches, step, SETTINGS, EpochHooks(on_epoch=lambda e, _: _stop_after(e, 1), state_sink=saved.append))
    except _Stop:
        pass
    assert [state["epoch"] for state in saved] == [1]
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.zero_()  # forget the weights: the saved state must bring them back
    resumed_epochs = []
    fit(model, batches, step, SETTINGS, EpochHooks(on_epoch=lambda e, _: resumed_epochs.append(e), resume=saved[0]))
    assert resumed_epochs == [2, 3]
    for a, b in zip(straight.state_dict().values(), model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6)
