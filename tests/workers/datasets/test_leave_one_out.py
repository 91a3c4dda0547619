"""Leave-one-out evaluation's data (workers.datasets.leave_one_out) and its place in a search's splits
(orchestrator.setup.data.load_search_data)."""

import numpy as np
import pytest

from orchestrator.config import validate_config
from orchestrator.setup.data import load_search_data
from tests.conftest import tiny_tree
from workers.datasets import DataError, ImageSet, RetrievalData
from workers.datasets.leave_one_out import pooled_for_leave_one_out


def _set(count, offset, ids=None):
    images = np.full((count, 1, 4, 4), offset, dtype=np.uint8)
    return ImageSet(images, np.arange(count) % 2, ids if ids is not None else np.array([f"i{offset + i}" for i in
                                                                                      range(count)]))


def _data(query, gallery):
    return RetrievalData("toy", _set(6, 100), query, gallery, ("a", "b"), (0.5,), (0.25,))


def test_the_pool_is_the_query_then_the_gallery_split_on_both_sides():
    pooled = pooled_for_leave_one_out(_data(_set(3, 0), _set(5, 10)))
    assert pooled.query is pooled.gallery and len(pooled.query) == 8
    assert pooled.query.ids.tolist() == ["i0", "i1", "i2", "i10", "i11", "i12", "i13", "i14"]
    assert pooled.query.images[3, 0, 0, 0] == 10 and len(pooled.train) == 6  # train untouched
    query_ids, gallery_ids = pooled.pair_ids()
    assert query_ids.tolist() == gallery_ids.tolist()


def test_repeated_ids_are_refused_naming_the_option():
    with pytest.raises(DataError, match="evaluation.held_out=split"):
        pooled_for_leave_one_out(_data(_set(2, 0, np.array(["x", "y"])), _set(2, 5, np.array(["y", "z"]))))


def test_a_search_pools_the_held_out_splits_and_keeps_the_validation_halves_apart(tmp_path):
    tree = tiny_tree(tmp_path, data={"train_size": 600, "validation_size": 100, "query_size": 100,
                                     "gallery_size": 300}, evaluation={"held_out": "leave_one_out"})
    search_data = load_search_data(validate_config(tree))
    held_out, selection = search_data.held_out, search_data.selection
    assert held_out.query is held_out.gallery and len(held_out.query) == 400
    assert len(set(held_out.query.ids)) == 400 and all(image_id.startswith("test:") for image_id in held_out.query.ids)
    assert not set(selection.query.ids) & set(selection.gallery.ids)  # validation halves stay disjoint
    assert len(selection.query) + len(selection.gallery) == 100 and len(selection.train) == 500
