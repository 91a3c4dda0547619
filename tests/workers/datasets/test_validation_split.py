"""The validation split carved from train (workers.datasets.validation) and the gallery model's early
stopping on it (workers.gallery.training.GalleryEarlyStopping)."""

import numpy as np
import pytest
import torch

from workers.datasets import DataError, ImageSet, RetrievalData
from workers.datasets.validation import carve_validation
from workers.gallery.model import GalleryArchitecture, GalleryEmbeddingNet
from workers.gallery.training import GalleryEarlyStopping, GalleryTrainingSettings, train_gallery
from workers.training.fit import OptimSettings


def _set(labels, offset):
    labels = np.asarray(labels)
    images = np.random.default_rng(offset).integers(0, 255, (len(labels), 1, 8, 8), dtype=np.uint8)
    return ImageSet(images, labels, np.array([f"i{offset + index}" for index in range(len(labels))]))


def _data(train_per_class=20, classes=4):
    train = _set(np.repeat(np.arange(classes), train_per_class), 0)
    query = _set(np.repeat(np.arange(classes), 2), 10_000)
    gallery = _set(np.repeat(np.arange(classes), 5), 20_000)
    return RetrievalData("toy", train, query, gallery, tuple(f"c{i}" for i in range(classes)), (0.5,), (0.25,))


def test_validation_comes_from_train_only_and_splits_into_disjoint_stratified_halves():
    data = _data()
    view = carve_validation(data, 24, seed=0)
    train_ids, query_ids, gallery_ids = (set(getattr(view, split).ids) for split in ("train", "query", "gallery"))
    assert len(train_ids) == 80 - 24 and len(query_ids) == 12 and len(gallery_ids) == 12
    assert not (train_ids & query_ids or train_ids & gallery_ids or query_ids & gallery_ids)
    assert query_ids | gallery_ids | train_ids == set(data.train.ids)  # nothing from the held-out splits
    assert np.bincount(view.query.labels).tolist() == [3, 3, 3, 3]
    assert np.bincount(view.gallery.labels).tolist() == [3, 3, 3, 3]
    assert (view.mean, view.std) == (data.mean, data.std)  # normalised as the held-out splits are
    again = carve_validation(data, 24, seed=0)
    assert list(again.query.ids) == list(view.query.ids)
    assert list(carve_validation(data, 24, seed=1).query.ids) != list(view.query.ids)


@pytest.mark.parametrize("size, fragment", [(2, "too small"), (80, "leaves no training images"),
                                            (5, "no validation gallery images")])
def test_sizes_that_cannot_give_a_validation_split_are_refused_naming_the_field(size, fragment):
    with pytest.raises(DataError, match="data.validation_size") as error:
        carve_validation(_data(), size, seed=0)
    assert fragment in str(error.value)


class ScriptedStopping(GalleryEarlyStopping):
    """Early stopping fed a scripted validation score per epoch instead of measuring one."""

    def __init__(self, scores, patience):
        super().__init__(validation=_data(), task="retrieval", metric="map", patience=patience)
        self.scores = list(scores)

    def score(self, model, device):
        return {"validation_map": self.scores.pop(0), "validation_r1": 0.0}


def test_training_stops_after_patience_epochs_without_a_better_score_and_chooses_the_best_epoch():
    model = GalleryEmbeddingNet(GalleryArchitecture("resnet10t", 8, 4, 1, 8, stem_stride=2))
    stopper = ScriptedStopping([10, 30, 25, 29, 31], patience=2)
    states = []
    for epoch in range(1, 6):
        with torch.no_grad():
            next(model.parameters()).fill_(epoch)
        states.append(epoch)
        if stopper.after_epoch(epoch, {"loss": 1.0 / epoch}, model, torch.device("cpu")):
            break
    assert epoch == 4 and stopper.stopped_early  # epochs 3 and 4 were not better than epoch 2's 30
    assert (stopper.best_epoch, stopper.best_score) == (2, 30)
    # The best epoch is not the end of the 5-epoch schedule: the model is trained again for 2 epochs.
    assert stopper.needs_retraining(5)
    improving = ScriptedStopping([1, 2, 3], patience=5)
    for epoch in range(1, 4):
        improving.after_epoch(epoch, {"loss": 1.0}, model, torch.device("cpu"))
    assert not improving.needs_retraining(3)  # its best epoch ended the full schedule
    record = stopper.record()
    assert record["early_stopping"]["epochs_trained"] == 4 and record["early_stopping"]["best_epoch"] == 2
    assert [point["validation_map"] for point in record["validation_curve"]] == [10, 30, 25, 29]


def test_a_metric_the_task_does_not_report_is_refused_naming_the_reported_ones():
    stopper = GalleryEarlyStopping(validation=_data(), task="retrieval", metric="tar_far_1e-2", patience=1)
    with pytest.raises(ValueError, match="no metric 'tar_far_1e-2'.*map"):
        stopper.after_epoch(1, {"loss": 1.0}, GalleryEmbeddingNet(GalleryArchitecture("resnet10t", 8, 4, 1, 8)),
                            torch.device("cpu"))


def test_a_real_gallery_training_stops_on_its_validation_curve():
    data = carve_validation(_data(train_per_class=30), 40, seed=0)
    stopper = GalleryEarlyStopping(validation=data, task="retrieval", metric="map", patience=1, min_delta=1000.0)
    settings = GalleryTrainingSettings("resnet10t", 8, OptimSettings(epochs=6, batch_size=32, lr=1e-3), stem_stride=1)
    seen = []
    train_gallery(data, settings, torch.device("cpu"), on_epoch=lambda epoch, stats: seen.append(stats),
                  early_stopping=stopper)
    # min_delta 1000 points: no epoch after the first can be better, so it stops after epoch 2.
    assert len(seen) == 2 and stopper.best_epoch == 1 and stopper.stopped_early
    assert all("validation_map" in stats and "loss" in stats for stats in seen)


def test_a_validation_size_beyond_a_quarter_of_train_is_capped_with_a_warning(caplog):
    """Issue 27: the quickstart's 2,000 took two thirds of a 3,000-image train split."""
    from workers.datasets.validation import MAX_VALIDATION_FRACTION, validation_images

    assert MAX_VALIDATION_FRACTION == 0.25
    assert validation_images(2000, 12000) == 2000  # the quickstart: a sixth, as configured
    assert not caplog.records
    assert validation_images(2000, 3000) == 750
    assert "data.validation_size=2000 would take 67% of the 3000 training images" in caplog.text
    assert "capped at 750" in caplog.text
    assert validation_images(2000, 3000, max_fraction=1.0) == 2000  # a search recorded before the cap keeps its split
