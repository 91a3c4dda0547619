"""A validation split carved from train, so that what is selected is not what is reported.

Rules (``data.validation_size``):

* ``data.validation_size`` images are drawn from the **train** split, stratified and seeded by
  ``data.seed``; query and gallery are never touched. 0 turns the split off: selection and reporting
  then share the query/gallery splits (the quickstart's optimistic reading, named as such).
* The drawn images are split again, stratified, into a validation query half (``size // 2``) and a
  validation gallery half (the rest): retrieval needs both sides, and with disjoint halves an image
  is never its own match.
* ``carve_validation`` returns the **selection view**: ``train`` is the train split less the
  validation images, ``query``/``gallery`` are the validation halves. Searches train, early-stop
  and select on this view; the held-out query/gallery splits are evaluated only for reporting.
* Preprocessing statistics (``mean``, ``std``) stay those of the whole train split, so the view and
  the held-out splits normalise images identically.
* Every validation-query class needs validation-gallery images, and train must keep images: sizes
  that cannot give that are refused, naming ``data.validation_size``.
* A job sizes the split to its data (``validation_images``): at most ``data.validation_max_fraction``
  (default ``MAX_VALIDATION_FRACTION``, a quarter; 1 for searches recorded before the cap) of the train split, so that a size meant for a large set (the quickstart's 2,000 of
  12,000) does not take most of a small collection's training images; a larger one is capped, with
  a warning naming ``data.validation_size``.
* Open-set: the validation images come from the train classes (the only classes train has), so
  validation measures retrieval among seen classes while the held-out splits measure unseen ones.
  That ranks candidates badly for unseen classes (docs/benchmarks.md, "Open-set Fashion-MNIST").

Class-disjoint validation (``data.validation_classes``, ``carve_class_validation``):

* the named classes (names or indices of ``class_names``, at least 2) are taken out of the train
  split: no model trains on any of their images, and the held-out query/gallery splits may not hold
  them (a validation class that is evaluated is refused, naming ``data.validation_classes``), so
  they are classes that neither train nor are evaluated;
* ``data.validation_size`` of their train-split images (stratified, seeded; 0: all of them) become
  the validation query (half) and gallery (the rest) splits, the same halving as above; their images
  not drawn are used nowhere. The quarter cap does not apply (these images could not train anyway);
* a validation class without train-split images, or one leaving train fewer than 2 classes, is
  refused; the selection view is otherwise the one above (train less those classes).
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from workers.datasets.errors import DataError
from workers.datasets.splits import stratified_split
from workers.datasets.types import ImageSet, RetrievalData


logger = logging.getLogger(__name__)

# The largest share of the train split a validation split may take.
MAX_VALIDATION_FRACTION = 0.25


def validation_images(size: int, train_images: int, max_fraction: float = MAX_VALIDATION_FRACTION) -> int:
    """``data.validation_size`` sized to a train split of ``train_images``: capped at ``max_fraction``
    of it, with a warning (module rules)."""
    cap = int(max_fraction * train_images)
    if size <= cap:
        return size
    logger.warning("data.validation_size=%d would take %.0f%% of the %d training images; the validation split is "
                   "capped at %d (data.validation_max_fraction=%g), so that %d images still train. Set "
                   "data.validation_size to at most %d to choose the size yourself", size,
                   100 * size / max(1, train_images), train_images, cap, max_fraction, train_images - cap, cap)
    return cap


def carve_validation(data: RetrievalData, size: int, seed: int) -> RetrievalData:
    """The selection view of ``data``: train less ``size`` validation images, which become its query
    (half) and gallery (the rest) splits (module rules)."""
    train = data.train
    if size < 4:
        raise DataError(f"data.validation_size={size} is too small for a validation query and gallery half; give "
                        "at least 4 images (a few per class), or 0 to turn the validation split off")
    if size >= len(train):
        raise DataError(f"data.validation_size={size} leaves no training images out of the {len(train)} of the train "
                        "split; lower it, or raise data.train_size")
    labels = np.asarray(train.labels)
    validation_index, train_index = stratified_split(labels, [size, len(labels) - size], seed)
    query, gallery = _halves(data, validation_index, labels, seed)
    return replace(data, train=train.subset(train_index), query=query, gallery=gallery)


def _halves(data: RetrievalData, validation_index: np.ndarray, labels: np.ndarray, seed: int
            ) -> tuple[ImageSet, ImageSet]:
    """The train images at ``validation_index`` split into a validation query half and a gallery half."""
    size = len(validation_index)
    query_part, gallery_part = stratified_split(labels[validation_index], [size // 2, size - size // 2], seed + 1)
    query = data.train.subset(validation_index[query_part])
    gallery = data.train.subset(validation_index[gallery_part])
    missing = sorted(set(query.labels.tolist()) - set(gallery.labels.tolist()))
    if missing:
        names = [data.class_names[label] for label in missing[:10]]
        raise DataError(f"data.validation_size={size} gives classes {names} validation queries but no validation "
                        "gallery images; raise data.validation_size (at least two images per class of the validation split)")
    return query, gallery


def carve_class_validation(data: RetrievalData, classes: list[int | str], size: int, seed: int) -> RetrievalData:
    """The selection view of ``data`` with class-disjoint validation: train less every image of ``classes``,
    ``size`` of which (0: all) become its query (half) and gallery (the rest) splits (module rules)."""
    chosen = resolve_classes(classes, data.class_names)
    evaluated = set(np.asarray(data.query.labels).tolist()) | set(np.asarray(data.gallery.labels).tolist())
    clash = [data.class_names[label] for label in chosen if label in evaluated]
    if clash:
        raise DataError(f"data.validation_classes names {clash}, which the query/gallery splits evaluate: a "
                        "validation class must neither train nor be evaluated; choose classes of the train split "
                        f"(open_set on one pool: among the first data.train_classes), e.g. "
                        f"{_train_class_names(data, evaluated)[-2:]}")
    labels = np.asarray(data.train.labels)
    is_validation = np.isin(labels, chosen)
    absent = [data.class_names[label] for label in chosen if not (labels == label).any()]
    if absent:
        raise DataError(f"data.validation_classes names {absent}, which have no images in the train split; choose "
                        f"among {_train_class_names(data, evaluated)}")
    if len(np.unique(labels[~is_validation])) < 2:
        raise DataError(f"data.validation_classes {[data.class_names[label] for label in chosen]} leave the train "
                        "split fewer than 2 classes to train on; name fewer validation classes, or raise "
                        "data.train_classes")
    available = np.flatnonzero(is_validation)
    if size > len(available):
        raise DataError(f"data.validation_size={size} asks for more than the {len(available)} train-split images of "
                        "data.validation_classes; lower it, or set 0 to use all of them")
    drawn = available if size == 0 else available[stratified_split(labels[available], [size], seed)[0]]
    query, gallery = _halves(data, drawn, labels, seed)
    return replace(data, train=data.train.subset(np.flatnonzero(~is_validation)), query=query, gallery=gallery)


def resolve_classes(classes: list[int | str], class_names: tuple[str, ...]) -> list[int]:
    """``data.validation_classes`` as label indices: an index of ``class_names`` or one of its names."""
    resolved = []
    for item in classes:
        if isinstance(item, int) and 0 <= item < len(class_names):
            resolved.append(item)
        elif isinstance(item, str) and item in class_names:
            resolved.append(class_names.index(item))
        else:
            raise DataError(f"data.validation_classes: {item!r} is neither a class name nor an index below "
                            f"{len(class_names)}; the classes are {list(class_names)[:20]}")
    if len(set(resolved)) != len(resolved) or len(resolved) < 2:
        raise DataError(f"data.validation_classes {list(classes)} must name at least 2 different classes (retrieval "
                        "among one class ranks nothing)")
    return resolved


def _train_class_names(data: RetrievalData, evaluated: set[int]) -> list[str]:
    present = sorted(set(np.asarray(data.train.labels).tolist()) - evaluated)
    return [data.class_names[label] for label in present]
