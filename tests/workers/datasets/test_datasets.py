import gzip
import shutil

import numpy as np
import pytest
from PIL import Image

from workers.datasets import (
    DataError,
    DataRequest,
    fashion_mnist,
    list_sources,
    load_retrieval_data,
    register_source,
    stratified_split,
)


def test_stratified_split_is_exact_disjoint_proportional_and_deterministic():
    labels = np.repeat(np.arange(4), [100, 200, 300, 400])
    first = stratified_split(labels, [100, 400], seed=7)
    again = stratified_split(labels, [100, 400], seed=7)
    other = stratified_split(labels, [100, 400], seed=8)
    assert [len(part) for part in first] == [100, 400]
    assert not set(first[0]) & set(first[1])
    assert all((a == b).all() for a, b in zip(first, again))
    assert not (first[0] == other[0]).all()
    assert np.bincount(labels[first[0]]).tolist() == [10, 20, 30, 40]


def test_split_refuses_single_class_and_oversized_requests():
    with pytest.raises(DataError, match="at least 2"):
        stratified_split(np.zeros(10, dtype=int), [5], seed=0)
    with pytest.raises(DataError, match="only 10"):
        stratified_split(np.arange(10) % 2, [8, 8], seed=0)


def test_fashion_mnist_from_the_debian_files_gives_disjoint_stratified_splits():
    data = load_retrieval_data("fashion_mnist", DataRequest(train_size=1000, query_size=200, gallery_size=800))
    assert (len(data.train), len(data.query), len(data.gallery)) == (1000, 200, 800)
    assert data.train.images.shape[1:] == (1, 28, 28) and data.train.images.dtype == np.uint8
    assert np.bincount(data.query.labels).tolist() == [20] * 10
    query_rows = {row.tobytes() for row in data.query.images}
    assert not query_rows & {row.tobytes() for row in data.gallery.images}


def test_missing_data_set_says_how_to_get_it(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_retrieval_data("fashion_mnist", DataRequest(root=str(tmp_path / "nowhere")))


def test_truncated_data_set_is_refused(tmp_path):
    for name in fashion_mnist.FILES:
        shutil.copy(fashion_mnist.DEBIAN_DIR / name, tmp_path / name)
    raw = gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz").read()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as handle:
        handle.write(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="truncated"):
        load_retrieval_data("fashion_mnist", DataRequest(root=str(tmp_path)))


def test_download_checks_the_checksum(tmp_path):
    source = tmp_path / "mirror"
    source.mkdir()
    for name in fashion_mnist.FILES:
        (source / name).write_bytes(b"not the real file")
    with pytest.raises(DataError, match="SHA-256"):
        fashion_mnist.fetch(tmp_path / "cache", base_url=source.as_uri() + "/")
    assert not any((tmp_path / "cache").iterdir())


def _write_folder(root, classes, per_class, size=(20, 16)):
    rng = np.random.default_rng(0)
    for index, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = rng.integers(0, 255, size=(*size, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / name / f"{i}.{'png' if i % 2 else 'jpg'}")


def test_image_folder_with_mixed_formats_is_decoded_once_and_split(tmp_path):
    _write_folder(tmp_path / "faces", ["alice", "bob", "carol"], per_class=10)
    request = DataRequest(root=str(tmp_path / "faces"), query_size=6, gallery_size=9, image_size=24, channels=1)
    data = load_retrieval_data("image_folder", request)
    assert data.class_names == ("alice", "bob", "carol")
    assert (len(data.query), len(data.gallery), len(data.train)) == (6, 9, 15)
    assert data.train.images.shape[1:] == (1, 24, 24)
    assert np.bincount(data.query.labels).tolist() == [2, 2, 2]


def test_image_folder_errors_name_the_problem(tmp_path):
    with pytest.raises(DataError, match="not a folder"):
        load_retrieval_data("image_folder", DataRequest(root=str(tmp_path / "missing")))
    _write_folder(tmp_path / "one", ["only"], per_class=6)
    with pytest.raises(DataError, match="at least 2"):
        load_retrieval_data("image_folder", DataRequest(root=str(tmp_path / "one"), query_size=1, gallery_size=2))
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "x.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="could not be decoded"):
        load_retrieval_data("image_folder", DataRequest(root=str(tmp_path / "bad")))


def test_sizes_that_do_not_fit_name_the_fields():
    with pytest.raises(DataError, match=r"data.query_size=6000 \+ data.gallery_size=6000"):
        load_retrieval_data("fashion_mnist", DataRequest(query_size=6000, gallery_size=6000))
    with pytest.raises(DataError, match="data.train_size=70000"):
        load_retrieval_data("fashion_mnist", DataRequest(train_size=70000))
    with pytest.raises(DataError, match="data.image_size and data.channels"):
        load_retrieval_data("fashion_mnist", DataRequest(image_size=64))


def test_a_query_class_without_gallery_images_is_refused(tmp_path):
    _write_folder(tmp_path / "few", ["big", "small"], per_class=30)
    for extra in sorted((tmp_path / "few" / "small").iterdir())[3:]:
        extra.unlink()
    with pytest.raises(DataError, match=r"\['small'\] have query images but none in the gallery"):
        load_retrieval_data("image_folder", DataRequest(root=str(tmp_path / "few"), query_size=10, gallery_size=2))


def test_an_unknown_source_names_the_field_and_the_registered_sources():
    with pytest.raises(DataError, match=r"unknown data.source 'imagenet'; allowed values are "
                                        r"\['fashion_mnist', 'image_folder', 'manifest', 'orl_faces'\]"):
        load_retrieval_data("imagenet", DataRequest())


def test_a_second_source_of_a_registered_name_is_refused():
    with pytest.raises(ValueError, match="data source 'fashion_mnist' is registered twice"):
        register_source("fashion_mnist")(lambda request: None)
    assert list_sources() == ["fashion_mnist", "image_folder", "manifest", "orl_faces"]
