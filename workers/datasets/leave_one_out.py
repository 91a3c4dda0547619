"""Leave-one-out evaluation (``evaluation.held_out: leave_one_out``): the query and gallery splits
pooled, every pooled image a query against all the others.

Rules:
* the pool is the query split followed by the gallery split, and it becomes both: the query model
  embeds every image as a query, the gallery model every image as a gallery item;
* a query's own image is left out of its ranking by its id (``evaluators.retrieval``; every
  evaluation passes the splits' ids), so ids must be unique in the pool;
* nothing else changes: the train split, and a validation split carved from it, stay as they are.
  Compared with a query/gallery partition, every image is scored as a query (on Fashion-MNIST's
  test split, 10,000 queries instead of 2,000) and no partition is chosen.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from workers.datasets.errors import DataError
from workers.datasets.shard_cache import ShardedImages
from workers.datasets.types import ImageSet, RetrievalData


def pooled_for_leave_one_out(data: RetrievalData) -> RetrievalData:
    """``data`` with its query and gallery splits replaced by their pool (module rules)."""
    query, gallery = data.query, data.gallery
    ids = np.concatenate([np.asarray(query.ids), np.asarray(gallery.ids)])
    if len(np.unique(ids)) != len(ids):
        raise DataError("evaluation.held_out=leave_one_out needs every query and gallery image to have its own id "
                        "(a query is left out of its own ranking by id); the data repeats ids: use "
                        "evaluation.held_out=split")
    if query.streamed != gallery.streamed:
        raise DataError("evaluation.held_out=leave_one_out: the query and gallery splits are stored differently "
                        "(one streamed, one in memory); set data.streaming to on or off")
    if query.streamed:
        images = ShardedImages.concatenate([query.images, gallery.images])
    else:
        images = np.concatenate([np.asarray(query.images), np.asarray(gallery.images)])
    pool = ImageSet(images, np.concatenate([query.labels, gallery.labels]), ids)
    return replace(data, query=pool, gallery=pool)
