"""Splits as the user defines them: split folders, data.protocol open_set/closed_set, single-image and empty classes."""

import logging

import numpy as np
import pytest
from PIL import Image

from workers.datasets import DataError, DataRequest, load_retrieval_data, stratified_split
from workers.datasets.image_folder import list_image_folder
from workers.gallery.classifier import ABSENT_CLASS_BIAS, class_prototypes, linear_probe


def _image(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


def _pool(root, counts):
    """ROOT/<class>/<i>.png for classes c0, c1, ... with ``counts`` images each."""
    for label, count in enumerate(counts):
        for index in range(count):
            _image(root / f"c{label}" / f"{index}.png", (17 * label + index) % 256)
    return root


def _split_folders(root):
    """train: cat, dog; query: cat, owl; gallery: cat, dog, owl (3 images per folder)."""
    layout = {"train": ["cat", "dog"], "query": ["cat", "owl"], "gallery": ["cat", "dog", "owl"]}
    for split, classes in layout.items():
        for name in classes:
            for index in range(3):
                _image(root / split / name / f"{index}.png", index)
    return root


def _request(root, **changes):
    return DataRequest(root=str(root), image_size=8, streaming=False, **changes)


# Split folders -------------------------------------------------------------------------------------


def test_split_folders_are_used_as_given_with_one_label_per_class_name(tmp_path):
    root = _split_folders(tmp_path / "data")
    data = load_retrieval_data("image_folder", _request(root, query_size=1, gallery_size=1))
    assert data.class_names == ("cat", "dog", "owl")
    assert (len(data.train), len(data.query), len(data.gallery)) == (6, 6, 9)
    assert np.bincount(data.query.labels, minlength=3).tolist() == [3, 0, 3]
    assert np.bincount(data.gallery.labels, minlength=3).tolist() == [3, 3, 3]
    assert data.train.ids.tolist()[0] == "train/cat/0.png" and data.gallery.ids.tolist()[-1] == "gallery/owl/2.png"
    assert data.protocol == "closed_set"


def test_split_folders_need_exactly_the_three_split_folders(tmp_path):
    root = _split_folders(tmp_path / "data")
    _image(root / "extra" / "x.png", 0)
    with pytest.raises(DataError, match=r"holds split folders \['gallery', 'query', 'train'\] but also holds "
                                        r"\['extra'\].*exactly \['train', 'query', 'gallery'\]"):
        list_image_folder(root)
    partial = tmp_path / "partial"
    _image(partial / "train" / "cat" / "0.png", 0)
    _image(partial / "query" / "cat" / "0.png", 0)
    with pytest.raises(DataError, match=r"but lacks \['gallery'\]"):
        list_image_folder(partial)


def test_an_empty_split_folder_is_refused_and_empty_class_folders_are_named(tmp_path, caplog):
    root = _split_folders(tmp_path / "data")
    (root / "train" / "fox").mkdir()
    with caplog.at_level(logging.WARNING, logger="workers.datasets.image_folder"):
        listing = list_image_folder(root)
    assert "fox" not in listing.class_names and "['train/fox']" in caplog.text
    for file in (root / "gallery").rglob("*.png"):
        file.unlink()
    with pytest.raises(DataError, match="the gallery split folder holds no images.*add ROOT/gallery/<class>/<image>"):
        list_image_folder(root)


def test_split_folders_under_open_set_must_keep_train_classes_apart(tmp_path):
    with pytest.raises(DataError, match=r"\['cat', 'dog'\]; move each class's images to one side"):
        load_retrieval_data("image_folder", _request(_split_folders(tmp_path / "data"), protocol="open_set"))


def test_empty_class_folders_of_one_pool_are_skipped_and_named(tmp_path, caplog):
    root = _pool(tmp_path / "pool", [4, 4])
    (root / "c9" / "nested").mkdir(parents=True)
    with caplog.at_level(logging.WARNING, logger="workers.datasets.image_folder"):
        listing = list_image_folder(root)
    assert listing.class_names == ("c0", "c1") and "['c9']" in caplog.text


# One pool: closed_set and open_set ----------------------------------------------------------------


def test_closed_set_on_one_pool_is_the_stratified_split_of_the_whole_pool(tmp_path):
    root = _pool(tmp_path / "pool", [6, 9, 12])
    data = load_retrieval_data("image_folder", _request(root, query_size=6, gallery_size=9, seed=5))
    labels = list_image_folder(root).labels
    query, gallery, train = stratified_split(labels, [6, 9, 12], seed=5)
    ids = list_image_folder(root).ids
    assert data.query.ids.tolist() == ids[query].tolist()
    assert data.gallery.ids.tolist() == ids[gallery].tolist()
    assert data.train.ids.tolist() == ids[train].tolist()


def test_open_set_on_one_pool_trains_on_the_first_classes_and_searches_the_others(tmp_path):
    root = _pool(tmp_path / "pool", [5, 5, 6, 6, 6])
    data = load_retrieval_data("image_folder", _request(root, protocol="open_set", query_size=6, gallery_size=9))
    assert data.protocol == "open_set" and data.num_classes == 5
    # Default: half of 5 classes, rounded down, train: c0 and c1, every image of them.
    assert np.bincount(data.train.labels, minlength=5).tolist() == [5, 5, 0, 0, 0]
    assert np.bincount(data.query.labels, minlength=5).tolist() == [0, 0, 2, 2, 2]
    assert np.bincount(data.gallery.labels, minlength=5).tolist() == [0, 0, 3, 3, 3]
    assert not set(data.query.ids) & set(data.gallery.ids)
    chosen = load_retrieval_data("image_folder", _request(root, protocol="open_set", train_classes=3, train_size=4,
                                                          query_size=2, gallery_size=2))
    assert set(chosen.train.labels.tolist()) == {0, 1, 2} and len(chosen.train) == 4
    assert set(chosen.query.labels.tolist()) | set(chosen.gallery.labels.tolist()) == {3, 4}


def test_open_set_sizes_and_class_counts_that_do_not_fit_are_refused(tmp_path):
    root = _pool(tmp_path / "pool", [5, 5, 6, 6, 6])
    with pytest.raises(DataError, match=r"data.query_size=10 \+ data.gallery_size=9 asks for more than the 18 images "
                                        r"of the 3 query/gallery classes"):
        load_retrieval_data("image_folder", _request(root, protocol="open_set", query_size=10, gallery_size=9))
    with pytest.raises(DataError, match="data.train_size=11 asks for more than the 10 images of the 2 train classes"):
        load_retrieval_data("image_folder", _request(root, protocol="open_set", train_size=11, query_size=3,
                                                     gallery_size=3))
    with pytest.raises(DataError, match="data.train_classes=4 must leave at least 2 classes on each side.*from 2 to 3"):
        load_retrieval_data("image_folder", _request(root, protocol="open_set", train_classes=4))
    with pytest.raises(DataError, match="open_set needs at least 4 classes"):
        load_retrieval_data("image_folder", _request(_pool(tmp_path / "three", [4, 4, 4]), protocol="open_set"))


def test_protocol_fields_are_checked(tmp_path):
    root = _pool(tmp_path / "pool", [4, 4])
    with pytest.raises(DataError, match=r"unknown data.protocol 'open'; allowed values are "
                                        r"\['closed_set', 'open_set'\]"):
        load_retrieval_data("image_folder", _request(root, protocol="open", query_size=2, gallery_size=2))
    with pytest.raises(DataError, match="data.train_classes=1 applies to data.protocol: open_set only"):
        load_retrieval_data("image_folder", _request(root, train_classes=1, query_size=2, gallery_size=2))


def test_single_image_classes_are_left_out_of_a_pool_split_with_a_warning(tmp_path, caplog):
    root = _pool(tmp_path / "pool", [1, 6, 6, 1])
    with caplog.at_level(logging.WARNING, logger="workers.datasets.splits"):
        data = load_retrieval_data("image_folder", _request(root, query_size=4, gallery_size=4))
    assert "2 class(es)" in caplog.text and "['c0', 'c3']" in caplog.text
    assert data.class_names == ("c0", "c1", "c2", "c3")  # labels stay global
    for part in (data.train, data.query, data.gallery):
        assert set(part.labels.tolist()) == {1, 2}
    assert len(data.train) == 12 - 8


def test_fashion_mnist_open_set_trains_on_five_classes_and_searches_the_other_five():
    data = load_retrieval_data("fashion_mnist", DataRequest(protocol="open_set", train_size=500, query_size=100,
                                                            gallery_size=400))
    assert data.protocol == "open_set" and data.num_classes == 10
    assert np.bincount(data.train.labels, minlength=10).tolist() == [100] * 5 + [0] * 5
    assert np.bincount(data.query.labels, minlength=10).tolist() == [0] * 5 + [20] * 5
    assert all(identifier.startswith("train:") for identifier in data.train.ids)
    assert all(identifier.startswith("test:") for identifier in data.gallery.ids)
    with pytest.raises(DataError, match=r"asks for more than the 5000 images of the Fashion-MNIST test split in the 5 "
                                        r"query/gallery classes"):
        load_retrieval_data("fashion_mnist", DataRequest(protocol="open_set"))  # 2000 + 8000 defaults


# The gallery classifier with classes that have no train images (open_set) ---------------------------


def test_classes_without_train_images_get_no_probability_in_built_classifiers():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(5, 8))
    labels = np.repeat([0, 1, 3], 10)  # classes 2 and 4 have no train images
    embeddings = centres[labels] + 0.3 * rng.normal(size=(30, 8))
    embeddings = (embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True)).astype(np.float32)
    for classifier in (class_prototypes(embeddings, labels, 5), linear_probe(embeddings, labels, 5)):
        assert classifier.weight.shape == (5, 8)
        assert not classifier.weight[[2, 4]].any() and (classifier.bias[[2, 4]] == ABSENT_CLASS_BIAS).all()
        logits = classifier.logit_scale * embeddings @ classifier.weight.T + classifier.bias
        probabilities = np.exp(logits - logits.max(1, keepdims=True))
        probabilities /= probabilities.sum(1, keepdims=True)
        assert probabilities[:, [2, 4]].max() < 1e-30
        assert (logits.argmax(1) == labels).mean() > 0.9, classifier.kind
