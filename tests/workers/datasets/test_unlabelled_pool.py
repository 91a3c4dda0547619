"""The unlabelled pool (data.unlabelled): drawn from images no split uses, labels dropped, never an
evaluated image (refused by id or by pixels), the same streamed and in memory."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from orchestrator.config import validate_config
from orchestrator.setup.data import load_search_data
from tests.conftest import tiny_tree
from tests.workers.datasets.test_streaming import request, write_collection
from workers.datasets import DataError, DataRequest, ImageSet, load_retrieval_data, register_source
from workers.datasets.fashion_mnist import CLASS_NAMES, load_arrays, locate
from workers.datasets.registry import SOURCES
from workers.datasets.unlabelled import UNLABELLED, refuse_evaluated_overlap

UNSEEN = list(CLASS_NAMES[5:])


def open_set_request(**overrides) -> DataRequest:
    fields = dict(protocol="open_set", train_classes=5, train_size=3000, query_size=300, gallery_size=1200,
                  unlabelled_classes=tuple(UNSEEN))
    return DataRequest(**{**fields, **overrides})


def official_train_labels(ids: np.ndarray) -> np.ndarray:
    _, labels = load_arrays(locate(None, False))["train"]
    assert all(str(image_id).startswith("train:") for image_id in ids)
    return labels[[int(str(image_id).split(":")[1]) for image_id in ids]]


def test_the_fashion_pool_is_the_train_files_unseen_class_images_without_labels_and_disjoint_from_every_split():
    data = load_retrieval_data("fashion_mnist", open_set_request())
    pool = data.unlabelled
    assert len(pool) == 30000  # the train file's 6,000 images of each of the 5 unseen classes
    assert set(pool.labels.tolist()) == {UNLABELLED}
    assert set(official_train_labels(pool.ids).tolist()) == {5, 6, 7, 8, 9}
    pool_ids = set(pool.ids.tolist())
    for split in (data.train, data.query, data.gallery):
        assert pool_ids.isdisjoint(split.ids.tolist())
    # The evaluated classes are the pool's (class-transductive), the evaluated images are not (checked, passes).
    assert set(data.query.labels.tolist()) == {5, 6, 7, 8, 9}
    refuse_evaluated_overlap(pool, {"query": data.query, "gallery": data.gallery})


def test_a_pool_of_classes_neither_trained_nor_evaluated_leaves_them_out_of_every_split():
    data = load_retrieval_data("fashion_mnist", open_set_request(
        train_classes=3, query_size=300, gallery_size=600, unlabelled_classes=("dress", "coat", "sandal", "shirt"),
        unlabelled_evaluated=False, unlabelled_size=2000))
    assert len(data.unlabelled) == 2000
    assert set(official_train_labels(data.unlabelled.ids).tolist()) == {3, 4, 5, 6}
    assert set(data.train.labels.tolist()) == {0, 1, 2}
    assert set(data.query.labels.tolist()) | set(data.gallery.labels.tolist()) == {7, 8, 9}
    with pytest.raises(DataError, match="data.unlabelled.classes names train classes \\['trouser'\\]"):
        load_retrieval_data("fashion_mnist", open_set_request(unlabelled_classes=("trouser",),
                                                              unlabelled_evaluated=False))


def test_an_unknown_pool_class_is_refused_naming_the_field_and_the_classes():
    with pytest.raises(DataError, match="data.unlabelled.classes names classes \\['boots'\\].*allowed values"):
        load_retrieval_data("fashion_mnist", open_set_request(unlabelled_classes=("boots",)))


def test_a_pool_holding_an_evaluated_image_is_refused_by_id_and_by_pixels():
    data = load_retrieval_data("fashion_mnist", open_set_request(unlabelled_size=500))
    evaluated = {"query": data.query, "gallery": data.gallery}
    leaked = ImageSet(np.concatenate([data.unlabelled.images, data.query.images[:2]]),
                      np.full(502, UNLABELLED), np.concatenate([data.unlabelled.ids, data.query.ids[:2]]))
    with pytest.raises(DataError, match="holds 2 image\\(s\\) of the evaluated query split \\(same id.*"
                                        "data.unlabelled.classes"):
        refuse_evaluated_overlap(leaked, evaluated)
    # The same pixels under another id (a copied file) are refused too.
    copied = ImageSet(leaked.images, leaked.labels, np.array([f"copy:{index}" for index in range(502)]))
    with pytest.raises(DataError, match="evaluated query split \\(same pixels: \\['copy:500 = test:"):
        refuse_evaluated_overlap(copied, evaluated)


def _leaky_source(data_request: DataRequest):
    """Fashion-MNIST whose pool also holds the gallery split's images: what a search must refuse."""
    data = load_retrieval_data("fashion_mnist", replace(data_request, unlabelled_size=300))
    gallery = data.gallery
    pool = ImageSet(np.concatenate([data.unlabelled.images, gallery.images]),
                    np.full(len(data.unlabelled) + len(gallery), UNLABELLED),
                    np.concatenate([data.unlabelled.ids, gallery.ids]))
    return replace(data, unlabelled=pool)


@pytest.fixture
def leaky_source():
    """The leaky source registered for one test only: a name left in the registry would show in every
    registry-driven test (allowed values, the configuration page) that runs after it."""
    register_source("leaky_pool_for_tests")(_leaky_source)
    yield "leaky_pool_for_tests"
    SOURCES.unregister("leaky_pool_for_tests")


def test_a_search_refuses_a_source_whose_pool_overlaps_the_held_out_gallery(tmp_path, leaky_source):
    tree = tiny_tree(tmp_path, data={"source": leaky_source, "protocol": "open_set", "train_classes": 5,
                                     "validation_size": 200, "unlabelled": {"classes": UNSEEN}})
    with pytest.raises(DataError, match="evaluated held-out gallery split"):
        load_search_data(validate_config(tree))
    honest = load_search_data(validate_config({**tree, "data": {**tree["data"], "source": "fashion_mnist"}}))
    assert set(honest.selection.unlabelled.ids.tolist()).isdisjoint(
        [image_id for split in honest.evaluated_splits().values() for image_id in split.ids.tolist()])


def test_agreement_images_are_held_back_from_the_pool_that_trains_and_are_never_evaluated(tmp_path):
    tree = tiny_tree(tmp_path, data={"protocol": "open_set", "train_classes": 5, "validation_size": 200,
                                     "unlabelled": {"classes": UNSEEN, "size": 1000, "agreement_size": 300}},
                     evaluation={"agreement_k": 10}, search={"metric": "cross_agreement"})
    selection = load_search_data(validate_config(tree)).selection
    trained, held = selection.unlabelled, selection.agreement
    assert (len(trained), len(held)) == (700, 300) and set(held.labels.tolist()) == {UNLABELLED}
    assert set(trained.ids.tolist()).isdisjoint(held.ids.tolist())  # what trains is never what ranks
    whole = load_search_data(validate_config({**tree, "data": {**tree["data"], "unlabelled": {
        "classes": UNSEEN, "size": 1000}}}))
    assert set(held.ids.tolist()) | set(trained.ids.tolist()) == set(whole.selection.unlabelled.ids.tolist())
    evaluated = [image_id for split in whole.evaluated_splits().values() for image_id in split.ids.tolist()]
    assert set(held.ids.tolist()).isdisjoint(evaluated)
    again = load_search_data(validate_config(tree)).selection.agreement
    assert again.ids.tolist() == held.ids.tolist()  # drawn by data.seed


@pytest.mark.parametrize("unlabelled, evaluation, says", [
    ({"agreement_size": 300}, {"agreement_k": 10}, "data.unlabelled.classes names none"),
    ({"classes": UNSEEN, "agreement_size": 300}, {}, "evaluation.agreement_k set; set it"),
    ({"classes": UNSEEN, "agreement_size": 10}, {"agreement_k": 10}, "hold back more than 10 images"),
])
def test_agreement_size_needs_a_pool_and_the_agreement(tmp_path, unlabelled, evaluation, says):
    from orchestrator.config import ConfigError

    tree = tiny_tree(tmp_path, data={"protocol": "open_set", "unlabelled": unlabelled}, evaluation=evaluation)
    with pytest.raises(ConfigError, match=says):
        validate_config(tree)


def test_agreement_size_must_leave_part_of_the_pool_to_train(tmp_path):
    from orchestrator.config import ConfigError

    tree = tiny_tree(tmp_path, data={"protocol": "open_set", "train_classes": 5,
                                     "unlabelled": {"classes": UNSEEN, "size": 500, "agreement_size": 500}},
                     evaluation={"agreement_k": 10})
    with pytest.raises(ConfigError, match="agreement_size=500 would hold back the whole pool of "
                                          "data.unlabelled.size=500 images"):
        validate_config(tree)
    # Without data.unlabelled.size the pool's size is known once the data is loaded: refused then.
    whole = {**tree, "data": {**tree["data"], "train_size": 29000, "query_size": 500, "gallery_size": 500,
                              "unlabelled": {"classes": ["sandal"], "agreement_size": 6000}}}
    with pytest.raises(DataError, match="agreement_size=6000 would hold back the whole pool of 6000 images"):
        load_search_data(validate_config(whole))


def test_the_pool_needs_a_label_free_loss(tmp_path):
    tree = tiny_tree(tmp_path, data={"protocol": "open_set", "unlabelled": {"classes": UNSEEN}},
                     training={"loss_weights": {"own_classifier": 1.0, "bct_influence": 1.0}})
    with pytest.raises(Exception, match="training.loss_weights.*cosine_alignment, l2_regression or relational"):
        validate_config(tree)


def test_streamed_and_in_memory_one_pool_collections_give_the_same_pool(tmp_path):
    root = write_collection(tmp_path / "images")
    # 4 classes, open_set: class_0 and class_1 train; class_2 and class_3 are searched, their images left
    # over by query and gallery form the pool of class_3.
    fields = dict(protocol="open_set", query_size=20, gallery_size=40, unlabelled_classes=("class_3",))
    streamed = load_retrieval_data("image_folder", request(root, tmp_path / "cache", True, **fields))
    in_memory = load_retrieval_data("image_folder", request(root, tmp_path / "cache", False, **fields))
    assert streamed.unlabelled.streamed and not in_memory.unlabelled.streamed
    assert len(streamed.unlabelled) > 0
    np.testing.assert_array_equal(np.asarray(streamed.unlabelled.images[:]), in_memory.unlabelled.images)
    np.testing.assert_array_equal(streamed.unlabelled.ids, in_memory.unlabelled.ids)
    assert all(str(image_id).startswith("class_3/") for image_id in in_memory.unlabelled.ids)
    evaluated = {*in_memory.query.ids.tolist(), *in_memory.gallery.ids.tolist(), *in_memory.train.ids.tolist()}
    assert evaluated.isdisjoint(in_memory.unlabelled.ids.tolist())


@pytest.mark.parametrize("name, trained, pooled, evaluated", [
    ("openset_fashion_unlabelled", {0, 1, 2, 3, 4}, {5, 6, 7, 8, 9}, {5, 6, 7, 8, 9}),
    ("openset_fashion_pool_apart", {0, 1, 2}, {3, 4, 5, 6}, {7, 8, 9}),
])
def test_the_shipped_open_set_pool_configs_keep_their_protocol(name, trained, pooled, evaluated):
    from pathlib import Path

    from orchestrator.config.loading import load_config

    config = load_config(Path(__file__).resolve().parents[3] / "configs" / f"{name}.yaml")
    data = load_search_data(config)
    assert set(data.selection.train.labels.tolist()) == trained
    assert set(official_train_labels(data.selection.unlabelled.ids).tolist()) == pooled
    assert set(data.held_out.query.labels.tolist()) == set(data.held_out.gallery.labels.tolist()) == evaluated
    evaluated_ids = {image_id for split in data.evaluated_splits().values() for image_id in split.ids.tolist()}
    assert evaluated_ids.isdisjoint(data.selection.unlabelled.ids.tolist())
