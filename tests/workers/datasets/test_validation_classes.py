"""Class-disjoint validation (data.validation_classes, workers.datasets.validation.carve_class_validation):
classes that neither train nor are evaluated."""

import numpy as np
import pytest

from workers.datasets import DataError, ImageSet, RetrievalData
from workers.datasets.validation import carve_class_validation


def _set(labels, offset):
    labels = np.asarray(labels)
    images = np.random.default_rng(offset).integers(0, 255, (len(labels), 1, 8, 8), dtype=np.uint8)
    return ImageSet(images, labels, np.array([f"i{offset + index}" for index in range(len(labels))]))


def _open_set(train_classes=4, classes=6):
    """Classes 0..train_classes-1 train, the others are evaluated (query/gallery)."""
    train = _set(np.repeat(np.arange(train_classes), 10), 0)
    evaluated = np.arange(train_classes, classes)
    query, gallery = _set(np.repeat(evaluated, 2), 10_000), _set(np.repeat(evaluated, 5), 20_000)
    return RetrievalData("toy", train, query, gallery, tuple(f"c{i}" for i in range(classes)), (0.5,), (0.25,),
                         protocol="open_set")


def test_validation_uses_only_its_classes_and_no_other_split_holds_them():
    data = _open_set()
    view = carve_class_validation(data, ["c2", 3], size=0, seed=0)
    assert set(view.query.labels) | set(view.gallery.labels) == {2, 3}
    assert set(view.train.labels) == {0, 1}  # neither validation class trains
    assert len(view.query) + len(view.gallery) == 20 and len(view.train) == 20
    assert not set(view.query.ids) & set(view.gallery.ids)
    assert set(view.query.ids) | set(view.gallery.ids) <= set(data.train.ids)  # nothing of the evaluated splits
    sized = carve_class_validation(data, [2, 3], size=8, seed=0)
    assert len(sized.query) + len(sized.gallery) == 8 and set(sized.train.labels) == {0, 1}
    assert np.bincount(sized.query.labels, minlength=4)[2:].tolist() == [2, 2]


@pytest.mark.parametrize("classes, fragment", [
    ([3, 4], "which the query/gallery splits evaluate"),  # c4 is evaluated
    (["c5", "c1"], "which the query/gallery splits evaluate"),
    ([1, 9], "neither a class name nor an index"),
    (["c1", "c1"], "at least 2 different classes"),
    ([0, 1, 2], "fewer than 2 classes to train on"),
])
def test_a_class_that_trains_alone_or_is_evaluated_is_refused_naming_the_field(classes, fragment):
    with pytest.raises(DataError, match="data.validation_classes") as error:
        carve_class_validation(_open_set(), classes, size=0, seed=0)
    assert fragment in str(error.value)


def test_a_validation_class_without_train_images_is_refused_with_the_classes_to_choose_from():
    data = _open_set()
    data = RetrievalData(data.name, data.train.subset(np.flatnonzero(data.train.labels != 3)), data.query,
                         data.gallery, data.class_names, data.mean, data.std, protocol="open_set")
    with pytest.raises(DataError, match=r"no images in the train split; choose among \['c0', 'c1', 'c2'\]"):
        carve_class_validation(data, [2, 3], size=0, seed=0)


def test_a_size_beyond_the_validation_classes_images_is_refused():
    with pytest.raises(DataError, match="data.validation_size=21 asks for more than the 20"):
        carve_class_validation(_open_set(), [2, 3], size=21, seed=0)
