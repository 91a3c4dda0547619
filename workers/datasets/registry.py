"""Named data sources behind one factory, ``load_retrieval_data``."""

from __future__ import annotations

from typing import Callable

import numpy as np

from workers.datasets import fashion_mnist, orl_faces
from workers.datasets.image_folder import load_image_folder
from workers.datasets.splits import stratified_split
from workers.datasets.types import DataError, DataRequest, ImageSet, RetrievalData, channel_statistics

DataSource = Callable[[DataRequest], RetrievalData]
_SOURCES: dict[str, DataSource] = {}


def register_source(name: str) -> Callable[[DataSource], DataSource]:
    def decorator(source: DataSource) -> DataSource:
        _SOURCES[name] = source
        return source

    return decorator


def list_sources() -> list[str]:
    return sorted(_SOURCES)


def load_retrieval_data(source: str, request: DataRequest) -> RetrievalData:
    if source not in _SOURCES:
        raise DataError(f"unknown data.source '{source}': allowed values are {list_sources()}")
    data = _SOURCES[source](request)
    missing = sorted(set(data.query.labels.tolist()) - set(data.gallery.labels.tolist()))
    if missing:
        names = [data.class_names[label] for label in missing[:10]]
        raise DataError(f"classes {names} have query images but none in the gallery split: raise data.gallery_size "
                        "or drop classes with very few images")
    return data


def _check_sizes(available: int, pool: str, **sizes: int) -> None:
    if sum(sizes.values()) > available:
        fields = " + ".join(f"data.{name}={size}" for name, size in sizes.items())
        raise DataError(f"{fields} asks for more than the {available} images of the {pool}; lower them")


@register_source("fashion_mnist")
def _fashion_mnist(request: DataRequest) -> RetrievalData:
    """Fine-tune on a stratified subset of the train split; query and gallery from the test split."""
    if request.image_size != 28 or request.channels != 1:
        raise DataError("data.image_size and data.channels apply to image folders; Fashion-MNIST is 28x28 "
                        "grayscale: leave them at 28 and 1")
    arrays = fashion_mnist.load_arrays(fashion_mnist.locate(request.root, request.download))
    train_images, train_labels = arrays["train"]
    test_images, test_labels = arrays["test"]
    train_size = len(train_labels) if request.train_size is None else request.train_size
    _check_sizes(len(train_labels), "Fashion-MNIST train split", train_size=train_size)
    _check_sizes(len(test_labels), "Fashion-MNIST test split", query_size=request.query_size,
                 gallery_size=request.gallery_size)
    (train_index,) = stratified_split(train_labels, [train_size], request.seed)
    query_index, gallery_index = stratified_split(test_labels, [request.query_size, request.gallery_size], request.seed)
    test = ImageSet(test_images, test_labels)
    return RetrievalData(
        name="fashion_mnist",
        train=ImageSet(train_images, train_labels).subset(train_index),
        query=test.subset(query_index),
        gallery=test.subset(gallery_index),
        class_names=fashion_mnist.CLASS_NAMES,
        mean=fashion_mnist.MEAN,
        std=fashion_mnist.STD,
    )


@register_source("image_folder")
def _image_folder(request: DataRequest) -> RetrievalData:
    """Query and gallery drawn first, then the train split from what is left (all of it by default)."""
    if request.root is None:
        raise DataError("data.root is required for data.source 'image_folder': the folder of class subfolders")
    images, labels, class_names = load_image_folder(request.root, request.image_size, request.channels)
    return _split_one_pool(f"image_folder:{request.root}", f"image folder {request.root}", images, labels,
                           class_names, request)


@register_source("orl_faces")
def _orl_faces(request: DataRequest) -> RetrievalData:
    """ORL faces split by image: every identity is in train, query (probes) and gallery (enrolled).

    Stratified per identity: the defaults of configs/faces.yaml (80 query, 120 gallery, 200 train)
    give 2 probe, 3 enrolled and 5 training images of each of the 40 people, all disjoint.
    """
    images, labels, class_names = orl_faces.load_faces(orl_faces.locate(request.root), request.image_size,
                                                       request.channels)
    return _split_one_pool("orl_faces", "the ORL faces", images, labels, class_names, request)


def _split_one_pool(name: str, pool: str, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                    request: DataRequest) -> RetrievalData:
    """Stratified, disjoint query, gallery and train splits of one pool of images (train: the rest by default)."""
    train_size = len(labels) - request.query_size - request.gallery_size if request.train_size is None \
        else request.train_size
    if train_size < 1:
        raise DataError(f"data.query_size + data.gallery_size = {request.query_size + request.gallery_size} leaves "
                        f"no training images out of {len(labels)} in {pool}; lower them")
    _check_sizes(len(labels), pool, query_size=request.query_size, gallery_size=request.gallery_size,
                 train_size=train_size)
    query_index, gallery_index, train_index = stratified_split(
        labels, [request.query_size, request.gallery_size, train_size], request.seed
    )
    everything = ImageSet(images, labels)
    train = everything.subset(train_index)
    mean, std = channel_statistics(train.images)
    return RetrievalData(
        name=name,
        train=train,
        query=everything.subset(query_index),
        gallery=everything.subset(gallery_index),
        class_names=class_names,
        mean=mean,
        std=std,
    )
