"""Deterministic, stratified, disjoint splits of a labelled set, and the retrieval splits of a source."""

from __future__ import annotations

import numpy as np

from workers.datasets.types import DataError, DataRequest, ImageSet, RetrievalData, channel_statistics


def stratified_split(labels: np.ndarray, sizes: list[int], seed: int) -> list[np.ndarray]:
    """Disjoint index arrays of the requested sizes, each with the label proportions of ``labels``.

    Per split, every class gets its proportional share rounded by largest remainder, so sizes are
    exact. Indices are drawn from one seeded permutation per class: the same inputs always give
    the same splits, and a larger split of the same seed contains the smaller one's first picks.
    """
    labels = np.asarray(labels)
    if sum(sizes) > len(labels):
        raise DataError(f"asked for {sum(sizes)} images in splits of {sizes}, but the set has only {len(labels)}")
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise DataError(
            f"the data set has {len(classes)} class(es); retrieval and classification need at least 2 "
            "(in an image folder: one subfolder per class or identity)"
        )
    rng = np.random.default_rng(seed)
    pools = {label: rng.permutation(np.flatnonzero(labels == label)) for label in classes}
    taken = dict.fromkeys(classes, 0)
    splits = []
    for size in sizes:
        remaining = np.array([counts[i] - taken[label] for i, label in enumerate(classes)], dtype=float)
        shares = _largest_remainder(size, remaining)
        parts = []
        for label, share in zip(classes, shares):
            parts.append(pools[label][taken[label] : taken[label] + share])
            taken[label] += share
        splits.append(np.sort(np.concatenate(parts)))
    return splits


def _largest_remainder(total: int, weights: np.ndarray) -> np.ndarray:
    """Integers proportional to ``weights`` summing to ``total``, never above a weight."""
    if total == 0:
        return np.zeros(len(weights), dtype=int)
    exact = total * weights / weights.sum()
    shares = np.minimum(np.floor(exact).astype(int), weights.astype(int))
    order = np.argsort(-(exact - shares), kind="stable")
    index = 0
    while shares.sum() < total:
        candidate = order[index % len(order)]
        if shares[candidate] < weights[candidate]:
            shares[candidate] += 1
        index += 1
    return shares


def check_split_sizes(available: int, pool: str, **sizes: int) -> None:
    """Refuse split sizes (named by their ``data.`` field) that add up to more than ``available``."""
    if sum(sizes.values()) > available:
        fields = " + ".join(f"data.{name}={size}" for name, size in sizes.items())
        raise DataError(f"{fields} asks for more than the {available} images of the {pool}; lower them")


def split_one_pool(name: str, pool: str, images: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...],
                   request: DataRequest, ids: np.ndarray | None = None) -> RetrievalData:
    """Stratified, disjoint query, gallery and train splits of one pool of images (train: the rest by default)."""
    train_size = len(labels) - request.query_size - request.gallery_size if request.train_size is None \
        else request.train_size
    if train_size < 1:
        raise DataError(f"data.query_size + data.gallery_size = {request.query_size + request.gallery_size} leaves "
                        f"no training images out of {len(labels)} in {pool}; lower them")
    check_split_sizes(len(labels), pool, query_size=request.query_size, gallery_size=request.gallery_size,
                      train_size=train_size)
    query_index, gallery_index, train_index = stratified_split(
        labels, [request.query_size, request.gallery_size, train_size], request.seed
    )
    everything = ImageSet(images, labels, ids)
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
