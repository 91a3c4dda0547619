"""The gallery model's training (workers.gallery.training): a kept model's schedule always completes,
augmentation reaches the gallery model's batches, and a long training resumes exactly."""

import numpy as np
import pytest
import torch

from workers.datasets import ImageSet, RetrievalData
from workers.datasets.validation import carve_validation
from workers.gallery.model import GalleryEmbeddingNet
from workers.gallery.training import (GalleryEarlyStopping, GalleryTrainingSettings, GalleryTrainingState,
                                      train_gallery)
from workers.training.batches import AugmentationSettings
from workers.training.fit import OptimSettings

CPU = torch.device("cpu")


def _data(per_class=24, classes=4, seed=0):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), per_class)
    images = rng.integers(0, 255, (len(labels), 1, 8, 8), dtype=np.uint8)
    ids = np.array([f"i{index}" for index in range(len(labels))])
    split = ImageSet(images, labels, ids)
    return RetrievalData("toy", split, split, split, tuple(f"c{i}" for i in range(classes)), (0.5,), (0.25,))


def _settings(epochs, augmentation=None):
    # Batches of 8: several steps per epoch, so schedules of different lengths differ within an epoch.
    return GalleryTrainingSettings("resnet10t", 8, OptimSettings(epochs=epochs, batch_size=8, lr=1e-3),
                                   stem_stride=1, augmentation=augmentation)


def _same_weights(first, second):
    return all(torch.equal(a, b) for a, b in zip(first.state_dict().values(), second.state_dict().values()))


def test_an_early_stop_keeps_a_model_trained_again_with_a_completed_schedule():
    data = carve_validation(_data(), 32, seed=0)
    # min_delta 1000 points: no epoch after the first can be better: the best epoch is 1, stop after 2.
    stopper = GalleryEarlyStopping(validation=data, task="retrieval", metric="map", patience=1, min_delta=1000.0)
    kept = train_gallery(data, _settings(6), CPU, early_stopping=stopper)
    assert stopper.best_epoch == 1 and stopper.stopped_early and stopper.retrained_epochs == 1
    assert stopper.record()["early_stopping"]["retrained_epochs"] == 1
    # The kept model is a 1-epoch schedule run to its end (epoch 1 of the 6-epoch schedule, its learning
    # rate still near its peak, differs from it: batches of 8 give several steps per epoch).
    assert _same_weights(kept, train_gallery(data, _settings(1), CPU))


def test_a_best_last_epoch_of_the_full_schedule_is_kept_without_training_again():
    data = carve_validation(_data(), 32, seed=0)
    stopper = GalleryEarlyStopping(validation=data, task="retrieval", metric="map", patience=5, min_delta=-1000.0)
    kept = train_gallery(data, _settings(2), CPU, early_stopping=stopper)
    assert stopper.best_epoch == 2 and stopper.retrained_epochs is None
    assert _same_weights(kept, train_gallery(data, _settings(2), CPU))


def test_a_resumed_gallery_training_ends_where_an_uninterrupted_one_does():
    data = _data()
    augmentation = AugmentationSettings(pad_padding=2)
    states = []
    whole = train_gallery(data, _settings(2, augmentation), CPU, state=GalleryTrainingState(sink=states.append))
    resumed = train_gallery(data, _settings(2, augmentation), CPU, state=GalleryTrainingState(resume=states[0]))
    assert len(states) == 2 and _same_weights(whole, resumed)
    # Augmentation reaches the batches: without it the same schedule ends elsewhere.
    assert not _same_weights(whole, train_gallery(data, _settings(2), CPU))


@pytest.mark.parametrize("native", [True, False])
def test_mixed_precision_runs_the_forward_pass_in_bfloat16_only_on_a_cpu_with_native_bfloat16(native, monkeypatch):
    import workers.training.precision as precision

    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": native, "amx_bf16": False})
    precision.native_bfloat16_cpu.cache_clear()
    dtypes = []
    original_forward = GalleryEmbeddingNet.forward

    def recording_forward(self, images):
        embeddings = original_forward(self, images)
        if self.training:
            dtypes.append(embeddings.dtype)
        return embeddings

    monkeypatch.setattr(GalleryEmbeddingNet, "forward", recording_forward)
    try:
        data = _data()
        settings = GalleryTrainingSettings("resnet10t", 8, OptimSettings(epochs=1, batch_size=32, lr=1e-3),
                                           stem_stride=1, mixed_precision=True)
        losses = []
        model = train_gallery(data, settings, CPU, on_epoch=lambda epoch, stats: losses.append(stats["loss"]))
    finally:
        precision.native_bfloat16_cpu.cache_clear()
    assert dtypes and set(dtypes) == {torch.bfloat16 if native else torch.float32}
    assert np.isfinite(losses).all()
    assert all(value.dtype == torch.float32 for value in model.state_dict().values() if value.is_floating_point())
    # Evaluation (embedding the gallery) stays float32 either way.
    assert model(torch.rand(2, 1, 8, 8)).dtype == torch.float32
