"""data.trial_train_size: search trials train on a fixed stratified subset of the train split, the same
for every trial and strategy, while final training trains on the whole split; validation and held-out
splits are the same for both."""

import numpy as np
import pytest

from orchestrator.config import validate_config
from orchestrator.search.trials import trial_train_view
from orchestrator.tracking.tags import ROLE_CANDIDATE, ROLE_FINAL_TRAINING, ROLE_TAG
from tests.conftest import tiny_tree
from workers.datasets import ImageSet, RetrievalData
from workers.gallery.embeddings import GalleryEmbeddings


def _data_and_embeddings(count: int = 600) -> tuple[RetrievalData, GalleryEmbeddings]:
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(10), count // 10)
    train = ImageSet(rng.integers(0, 255, (count, 1, 4, 4), dtype=np.uint8), labels,
                     np.array([f"train:{index}" for index in range(count)]))
    small = ImageSet(np.zeros((20, 1, 4, 4), np.uint8), np.repeat(np.arange(10), 2))
    data = RetrievalData("toy", train, small, small, tuple(map(str, range(10))), (0.5,), (0.25,))
    rows = np.arange(count, dtype=np.float32)[:, None].repeat(3, axis=1)  # row i holds i: its image's index
    gallery = GalleryEmbeddings(rows, np.zeros((20, 3), np.float32), np.zeros((20, 3), np.float32),
                                np.zeros((10, 3), np.float32), np.zeros(10, np.float32), 1.0, "fp", count + 40, 0.0)
    return data, gallery


def test_the_trial_subset_is_stratified_fixed_by_the_seed_and_keeps_each_image_with_its_embedding():
    data, gallery = _data_and_embeddings()
    view, view_gallery = trial_train_view(data, gallery, 200, seed=0)
    assert len(view.train) == 200 and np.bincount(view.train.labels).tolist() == [20] * 10
    indices = np.array([int(name.split(":")[1]) for name in view.train.ids])
    assert (view_gallery.train[:, 0] == indices).all()  # each image's own gallery embedding
    assert (view.train.images == data.train.images[indices]).all()
    again, _ = trial_train_view(data, gallery, 200, seed=0)
    assert (again.train.ids == view.train.ids).all()  # the same images for every trial and strategy
    other, _ = trial_train_view(data, gallery, 200, seed=1)
    assert set(other.train.ids) != set(view.train.ids)
    assert view.query is data.query and view.gallery is data.gallery and view_gallery.gallery is gallery.gallery
    # None, or a size not below the split: the whole split, unchanged.
    assert trial_train_view(data, gallery, None, 0) == (data, gallery)
    assert trial_train_view(data, gallery, 600, 0) == (data, gallery)


def test_an_earlier_search_resumes_with_trials_on_the_whole_train_split(tmp_path):
    from orchestrator.search.state import FIELDS_OF_EARLIER_SEARCHES

    assert FIELDS_OF_EARLIER_SEARCHES[("data", "trial_train_size")] is None
    assert validate_config(tiny_tree(tmp_path)).data.trial_train_size is None


@pytest.mark.integration
def test_trials_train_on_the_subset_and_the_final_training_on_the_whole_split(tmp_path, shared_ray):
    from rich.console import Console

    from orchestrator.search.driver import run_search
    from orchestrator.tracking.client import SearchTracker

    tree = tiny_tree(tmp_path, data={"train_size": 900, "validation_size": 200, "query_size": 150,
                                     "gallery_size": 250, "trial_train_size": 300},
                     gallery={"epochs": 1, "batch_size": 100, "checkpoint": None},
                     training={"epochs": 1, "batch_size": 100},
                     search={"num_candidates": 2, "strategy": "random", "final_training": {"epochs": 2}},
                     evaluation={"held_out": "leave_one_out"}, resources={"measure_latency": False})
    config = validate_config(tree)
    outcome = run_search(config, Console(quiet=True))
    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    children = tracker.child_runs(outcome.parent_run_id)
    trials = [run for run in children if run.data.tags[ROLE_TAG] == ROLE_CANDIDATE]
    finals = [run for run in children if run.data.tags[ROLE_TAG] == ROLE_FINAL_TRAINING]
    assert len(trials) == 2 and finals
    assert {run.data.metrics["final_train_images"] for run in trials} == {300}
    assert {run.data.metrics["final_train_images"] for run in finals} == {700}  # 900 less the validation split
    # Both evaluated on the same held-out pool (leave-one-out over query and gallery).
    assert all("final_heldout_cross_r1" in run.data.metrics for run in trials + finals)
