"""A search's data with class-disjoint validation (data.validation_classes): on open-set Fashion-MNIST the
validation classes neither train nor are evaluated, and a config naming an evaluated class is refused."""

from pathlib import Path

import pytest

from orchestrator.config import ConfigError, load_config
from orchestrator.setup.data import load_search_data
from workers.datasets import DataError

OPEN_SET = Path(__file__).resolve().parents[3] / "configs" / "open_set.yaml"


def test_open_set_fashion_mnist_search_data_validates_on_classes_neither_trained_nor_evaluated():
    config = load_config(OPEN_SET, overrides=[
        "data.validation_classes=[pullover, coat]", "data.validation_size=400", "data.train_size=3000"])
    search_data = load_search_data(config)
    selection, held_out = search_data.selection, search_data.held_out
    names = selection.class_names
    assert {names[label] for label in set(selection.query.labels) | set(selection.gallery.labels)} == {"pullover",
                                                                                                      "coat"}
    assert {names[label] for label in set(selection.train.labels)} == {"t-shirt/top", "trouser", "dress"}
    evaluated = set(held_out.query.labels) | set(held_out.gallery.labels)
    assert evaluated == {5, 6, 7, 8, 9} and not evaluated & set(selection.query.labels)
    assert len(selection.query) + len(selection.gallery) == 400


def test_a_config_naming_an_evaluated_class_is_refused_before_anything_trains():
    config = load_config(OPEN_SET, overrides=["data.validation_classes=[coat, sandal]"])
    with pytest.raises(DataError, match=r"data.validation_classes names \['sandal'\]"):
        load_search_data(config)
    with pytest.raises(ConfigError, match="data.validation_classes"):
        load_config(OPEN_SET, overrides=["data.validation_classes=[coat]"])
