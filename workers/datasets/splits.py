"""Train, query and gallery splits of a labelled collection, by the rules of ``data.protocol``.

Labels always index the collection's ``class_names`` (all classes, in class order), whatever the
protocol: a classifier has ``num_classes`` outputs, and only the classes present in train get
gradients.

One pool (an image folder of class folders, the ORL faces): the source draws the splits,
stratified and seeded (``stratified_split``), so the same seed gives the same splits.

* ``closed_set`` (the default): split by image, every class on every side. Query
  (``data.query_size``) and gallery (``data.gallery_size``) are drawn first, train from the rest
  (all of it unless ``data.train_size``).
* ``open_set``: train classes are disjoint from query/gallery classes. The first
  ``data.train_classes`` classes in class order train (default: half of them, rounded down); train
  is all their images, or a stratified ``data.train_size`` of them. Query and gallery are drawn by
  image, stratified, from the other classes; their images left over are used nowhere. Each side
  needs at least 2 classes (one class can be neither classified nor retrieved among).
* A class with a single image cannot give both a query and its match: query and gallery are drawn
  from the classes with at least 2 images; a single-image class (among the query/gallery classes in
  ``open_set``) is left out of every split, and a warning names it. Its label stays in
  ``class_names``.
* A query class whose images all went to query, none to gallery, is refused (raise
  ``data.gallery_size``); see ``refuse_query_classes_without_gallery``.
* Sizes that do not fit the pool are refused (``check_split_sizes``).
* ``data.unlabelled``: the images of the named classes that no split took form the unlabelled pool
  (``workers.datasets.unlabelled``); with ``evaluate_classes: false`` those classes take part in no split.

User-assigned splits (a manifest's ``split`` column, ``ROOT/train|query|gallery`` folders) are
used as given (``split_as_assigned``):

* ``data.query_size`` and ``data.gallery_size`` do not apply; ``data.train_size``, when set, caps
  train to a stratified, seeded subset of that size (refused when larger than the train split);
* every split needs images: an empty one is refused, naming it;
* ``open_set``: a class may not be both in train and in query or gallery (refused, naming the
  classes); ``data.train_classes`` does not apply (the splits say which classes train);
* a query class without gallery images is allowed: the registry warns, and the retrieval metrics
  leave those queries out (``evaluators.retrieval``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace

import numpy as np

from workers.datasets.errors import DataError
from workers.datasets.listing import SPLIT_NAMES
from workers.datasets.types import BadFile, DataRequest, ImageArray, ImageSet, RetrievalData, channel_statistics
from workers.datasets.unlabelled import held_apart_classes, refuse_train_classes_held_apart, unlabelled_pool

logger = logging.getLogger(__name__)

PROTOCOLS = ("closed_set", "open_set")
MIN_CLASSES_PER_SIDE = 2  # open_set: train classes, and query/gallery classes


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


def check_protocol(request: DataRequest, splits_assigned: bool) -> None:
    """Refuse an unknown ``data.protocol``, and ``data.train_classes`` where it does not apply."""
    if request.protocol not in PROTOCOLS:
        raise DataError(f"unknown data.protocol {request.protocol!r}; allowed values are {list(PROTOCOLS)}")
    if request.train_classes is None:
        return
    if request.protocol != "open_set":
        raise DataError(f"data.train_classes={request.train_classes} applies to data.protocol: open_set only (the "
                        "first classes train, the others are searched); set data.protocol: open_set, or unset "
                        "data.train_classes")
    if splits_assigned:
        raise DataError(f"data.train_classes={request.train_classes} does not apply to user-assigned splits: the "
                        "train split's classes are the train classes; unset data.train_classes")


def refuse_query_classes_without_gallery(query_labels: np.ndarray, gallery_labels: np.ndarray,
                                         class_names: tuple[str, ...]) -> None:
    """The rule of drawn splits: every query class has gallery images, else the sizes are too small."""
    missing = sorted(set(np.asarray(query_labels).tolist()) - set(np.asarray(gallery_labels).tolist()))
    if missing:
        names = [class_names[label] for label in missing[:10]]
        raise DataError(f"classes {names} have query images but none in the gallery split: raise data.gallery_size "
                        "or drop classes with very few images")


@dataclass(frozen=True)
class ImagePool:
    """A collection's decoded images before they are split: ``name`` of the data, ``description`` for
    messages ("the ORL faces", a folder), labels, class names, ids, and the files that were skipped."""

    name: str
    description: str
    images: ImageArray
    labels: np.ndarray
    class_names: tuple[str, ...]
    ids: np.ndarray | None = None
    bad_files: tuple[BadFile, ...] = ()


def split_one_pool(source: ImagePool, request: DataRequest) -> RetrievalData:
    """Stratified, disjoint query, gallery and train splits of one pool of images (module rules)."""
    check_protocol(request, splits_assigned=False)
    pool, class_names = source.description, source.class_names
    labels = np.asarray(source.labels)
    # data.unlabelled.evaluate_classes: false: the pool's classes take part in no split.
    considered = np.flatnonzero(~np.isin(labels, held_apart_classes(request, class_names)))
    indices = _open_set_indices if request.protocol == "open_set" else _closed_set_indices
    query_index, gallery_index, train_index = (considered[part] for part in
                                               indices(pool, labels[considered], class_names, request))
    index = {"train": train_index, "query": query_index, "gallery": gallery_index}
    data = _retrieval_data(source, labels, index, request)
    refuse_query_classes_without_gallery(data.query.labels, data.gallery.labels, class_names)
    refuse_train_classes_held_apart(request, class_names, data.train.labels)
    used = np.concatenate(list(index.values()))
    return replace(data, unlabelled=unlabelled_pool(ImageSet(source.images, labels, source.ids), used, request,
                                                     class_names))


def _retrieval_data(source: ImagePool, labels: np.ndarray, index: dict[str, np.ndarray],
                    request: DataRequest) -> RetrievalData:
    """The splits of ``source`` that ``index`` picks (split name -> image indices), normalised by the
    training split's channel statistics."""
    everything = ImageSet(source.images, labels, source.ids)
    train, query, gallery = (everything.subset(index[split]) for split in ("train", "query", "gallery"))
    mean, std = channel_statistics(train.images)
    return RetrievalData(name=source.name, train=train, query=query, gallery=gallery, class_names=source.class_names,
                         mean=mean, std=std, bad_files=source.bad_files, protocol=request.protocol)


def _closed_set_indices(pool: str, labels: np.ndarray, class_names: tuple[str, ...], request: DataRequest
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    kept = _without_single_image_classes(np.arange(len(labels)), labels, class_names, pool)
    train_size = len(kept) - request.query_size - request.gallery_size if request.train_size is None \
        else request.train_size
    if train_size < 1:
        raise DataError(f"data.query_size + data.gallery_size = {request.query_size + request.gallery_size} leaves "
                        f"no training images out of {len(kept)} in {pool}; lower them")
    check_split_sizes(len(kept), pool, query_size=request.query_size, gallery_size=request.gallery_size,
                      train_size=train_size)
    parts = stratified_split(labels[kept], [request.query_size, request.gallery_size, train_size], request.seed)
    return tuple(kept[part] for part in parts)


def _open_set_indices(pool: str, labels: np.ndarray, class_names: tuple[str, ...], request: DataRequest
                      ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    train_classes = open_set_train_classes(len(class_names), request.train_classes, pool)
    is_train = labels < train_classes
    train_pool = np.flatnonzero(is_train)
    if request.train_size is None:
        train_index = train_pool
    else:
        check_split_sizes(len(train_pool), f"{train_classes} train classes of {pool} (data.protocol: open_set)",
                          train_size=request.train_size)
        (part,) = stratified_split(labels[train_pool], [request.train_size], request.seed)
        train_index = train_pool[part]
    searched = _without_single_image_classes(np.flatnonzero(~is_train), labels, class_names, pool)
    searched_classes = len(np.unique(labels[searched]))
    if searched_classes < MIN_CLASSES_PER_SIDE:
        raise DataError(f"data.protocol: open_set leaves {searched_classes} class(es) with at least 2 images for "
                        f"query and gallery in {pool}; lower data.train_classes or add classes")
    check_split_sizes(len(searched), f"{searched_classes} query/gallery classes of {pool} (data.protocol: open_set)",
                      query_size=request.query_size, gallery_size=request.gallery_size)
    query_part, gallery_part = stratified_split(labels[searched], [request.query_size, request.gallery_size],
                                                request.seed)
    return searched[query_part], searched[gallery_part], train_index


def open_set_train_classes(num_classes: int, train_classes: int | None, pool: str) -> int:
    """How many classes (the first, in class order) train under ``open_set``: ``data.train_classes``,
    default half rounded down; at least ``MIN_CLASSES_PER_SIDE`` on each side."""
    smallest, largest = MIN_CLASSES_PER_SIDE, num_classes - MIN_CLASSES_PER_SIDE
    if largest < smallest:
        raise DataError(f"data.protocol: open_set needs at least {2 * MIN_CLASSES_PER_SIDE} classes ({smallest} to "
                        f"train on, {smallest} to search among), {pool} has {num_classes}; add classes or use "
                        "data.protocol: closed_set")
    chosen = num_classes // 2 if train_classes is None else train_classes
    if not smallest <= chosen <= largest:
        raise DataError(f"data.train_classes={chosen} must leave at least {smallest} classes on each side of the "
                        f"{num_classes} classes of {pool}: give a value from {smallest} to {largest}")
    return chosen


def _without_single_image_classes(indices: np.ndarray, labels: np.ndarray, class_names: tuple[str, ...],
                                  pool: str) -> np.ndarray:
    """``indices`` less the images of classes that have only one of them there (module rule), with a warning."""
    counts = np.bincount(labels[indices], minlength=len(class_names))
    single = np.flatnonzero(counts == 1)
    if len(single) == 0:
        return indices
    names = [class_names[label] for label in single[:10].tolist()]
    logger.warning("%d class(es) of %s have a single image, which cannot be both a query and its match; they are "
                   "left out of the splits: %s%s", len(single), pool, names, " ..." if len(single) > 10 else "")
    return indices[~np.isin(labels[indices], single)]


def split_as_assigned(source: ImagePool, splits: np.ndarray, request: DataRequest) -> RetrievalData:
    """The splits the user assigned (``splits``: ``train``/``query``/``gallery`` per image), by the module rules."""
    check_protocol(request, splits_assigned=True)
    pool, class_names = source.description, source.class_names
    if request.unlabelled_classes:
        raise DataError(f"data.unlabelled.classes does not apply to user-assigned splits ({pool}): every image is "
                        "in a split, none is left for the pool; unset data.unlabelled, or let cmpnas draw the "
                        "splits (no split column or split folders)")
    labels, splits = np.asarray(source.labels), np.asarray(splits)
    index = {split: np.flatnonzero(splits == split) for split in SPLIT_NAMES}
    for split, members in index.items():
        if len(members) == 0:
            raise DataError(f"the {split} split of {pool} has no decodable images; every split needs images: add "
                            f"{split} images, or replace the files that could not be decoded")
    if request.protocol == "open_set":
        refuse_shared_classes(labels[index["train"]], labels[np.concatenate([index["query"], index["gallery"]])],
                              class_names, pool)
    if request.train_size is not None:
        check_split_sizes(len(index["train"]), f"train split of {pool}", train_size=request.train_size)
        (part,) = stratified_split(labels[index["train"]], [request.train_size], request.seed)
        index["train"] = index["train"][part]
    logger.info("%s: splits as assigned, %d train, %d query, %d gallery images (%s; data.query_size and "
                "data.gallery_size do not apply%s)", pool, len(index["train"]), len(index["query"]),
                len(index["gallery"]), request.protocol,
                "" if request.train_size is None else f"; train capped at data.train_size={request.train_size}")
    return _retrieval_data(source, labels, index, request)


def refuse_shared_classes(train_labels: np.ndarray, searched_labels: np.ndarray, class_names: tuple[str, ...],
                          pool: str) -> None:
    """``open_set`` on assigned splits: no class may be both in train and in query or gallery."""
    shared = sorted(set(np.asarray(train_labels).tolist()) & set(np.asarray(searched_labels).tolist()))
    if shared:
        names = [class_names[label] for label in shared[:10]]
        raise DataError(f"data.protocol: open_set needs train classes disjoint from query/gallery classes, but "
                        f"{len(shared)} class(es) of {pool} are in both: {names}{' ...' if len(shared) > 10 else ''}; "
                        "move each class's images to one side, or use data.protocol: closed_set")
