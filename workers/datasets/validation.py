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
"""

from __future__ import annotations

import logging
from dataclasses import replace

import numpy as np

from workers.datasets.errors import DataError
from workers.datasets.splits import stratified_split
from workers.datasets.types import RetrievalData


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
    query_part, gallery_part = stratified_split(labels[validation_index], [size // 2, size - size // 2], seed + 1)
    query = train.subset(validation_index[query_part])
    gallery = train.subset(validation_index[gallery_part])
    missing = sorted(set(query.labels.tolist()) - set(gallery.labels.tolist()))
    if missing:
        names = [data.class_names[label] for label in missing[:10]]
        raise DataError(f"data.validation_size={size} gives classes {names} validation queries but no validation "
                        "gallery images; raise data.validation_size (at least two images per train class)")
    return replace(data, train=train.subset(train_index), query=query, gallery=gallery)
