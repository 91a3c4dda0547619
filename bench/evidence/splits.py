"""The protocol's data: the official Fashion-MNIST splits cut as ``data`` in the protocol says.

* ``selection``: train less the validation images (``validation_size``, stratified, ``data.seed``),
  whose query and gallery are the validation halves: every choice is made on it;
* ``held_out``: the official test split as one pool, each image a query against all the others
  (leave-one-out: query and gallery are the same images, and the evaluators leave a query's own
  image out of its ranking by its id);
* ``trial_train``: the fixed stratified subset of the selection view's train split that search and
  random trials train on (compute cut 3), the same for both methods.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from workers.datasets import RetrievalData
from workers.datasets.fashion_mnist import load_fashion_mnist
from workers.datasets.leave_one_out import pooled_for_leave_one_out
from workers.datasets.splits import stratified_split
from workers.datasets.types import DataRequest, ImageSet
from workers.datasets.validation import carve_validation


@dataclass(frozen=True)
class ProtocolData:
    selection: RetrievalData
    held_out: ImageSet
    trial_train: ImageSet


def protocol_data(data_section: dict, root: str | None = None) -> ProtocolData:
    if data_section["source"] != "fashion_mnist":
        raise ValueError(f"data.source {data_section['source']!r}: this runner reads fashion_mnist protocols")
    seed = int(data_section["seed"])
    official = load_fashion_mnist(DataRequest(root=root, **protocol_split_sizes(data_section), seed=seed))
    held_out = pooled_for_leave_one_out(official).query  # the product's pool: query then gallery split
    selection = carve_validation(official, int(data_section["validation_size"]), seed)
    train = selection.train
    size = data_section.get("trial_train_size")
    if size is None or size >= len(train):
        return ProtocolData(selection, held_out, train)
    (subset,) = stratified_split(np.asarray(train.labels), [int(size)], seed)
    return ProtocolData(selection, held_out, train.subset(np.sort(subset)))


def protocol_split_sizes(data_section: dict) -> dict[str, int | None]:
    """``train_size`` (null: the whole official train split) and the test split's query and gallery sizes
    (default 2,000 and 8,000: the whole official test split, pooled for leave-one-out): a product
    configuration given these sizes loads the very same images (``bench/evidence/search_config.py``)."""
    return {"train_size": data_section.get("train_size"), "query_size": int(data_section.get("query_size", 2000)),
            "gallery_size": int(data_section.get("gallery_size", 8000))}
