"""An open-set search with an unlabelled pool (data.unlabelled): the gallery model embeds the pool once,
every candidate trains on it through the label-free loss, and the held-out splits are reported."""

import pytest

from orchestrator.config import validate_config
from orchestrator.search.driver import run_search
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.tags import DATASET_CONTEXT_TAG, ROLE_CANDIDATE, ROLE_TAG
from tests.conftest import tiny_tree

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]


def test_an_open_set_search_with_an_unlabelled_pool_trains_candidates_on_it(tmp_path):
    from rich.console import Console

    tree = tiny_tree(tmp_path, data={"protocol": "open_set", "train_classes": 5, "train_size": 800,
                                     "validation_size": 200, "query_size": 150, "gallery_size": 250,
                                     "unlabelled": {"classes": ["sandal", "shirt", "sneaker", "bag", "ankle boot"],
                                                    "size": 400}},
                     gallery={"epochs": 1, "batch_size": 100, "checkpoint": None},
                     training={"epochs": 1, "batch_size": 100, "unlabelled_batch_size": 50},
                     search={"num_candidates": 2, "strategy": "random"}, resources={"measure_latency": False})
    config = validate_config(tree)
    console = Console(record=True, width=400)
    outcome = run_search(config, console)
    text = console.export_text()
    assert "unlabelled pool: 400 images" in text
    # train 600 + validation 100 + 100, held-out 150 + 250, and the pool's 400: each embedded once.
    assert "gallery model embedded 1600 images once" in text
    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    parent = tracker.client.get_run(outcome.parent_run_id)
    contexts = {next(tag.value for tag in item.tags if tag.key == DATASET_CONTEXT_TAG)
                for item in parent.inputs.dataset_inputs}
    assert contexts == {"train", "validation_query", "validation_gallery", "query", "gallery", "unlabelled"}
    candidates = [run for run in tracker.child_runs(outcome.parent_run_id) if run.data.tags[ROLE_TAG] == ROLE_CANDIDATE]
    assert len(candidates) == 2
    for run in candidates:
        assert run.data.metrics["unlabelled_loss_cosine_alignment"] > 0
        assert 0 < run.data.metrics["final_heldout_cross_r1"] <= 100


def test_a_search_ranks_on_the_agreement_over_pool_images_held_back_from_training(tmp_path):
    """data.unlabelled.agreement_size: candidates are ranked on the label-free agreement over pool images
    that no candidate trained on, each epoch, and the held-out splits are still only reported."""
    from rich.console import Console

    tree = tiny_tree(tmp_path, data={"protocol": "open_set", "train_classes": 5, "train_size": 800,
                                     "validation_size": 200, "query_size": 150, "gallery_size": 250,
                                     "unlabelled": {"classes": ["sandal", "shirt", "sneaker", "bag", "ankle boot"],
                                                    "size": 400, "agreement_size": 120}},
                     gallery={"epochs": 1, "batch_size": 100, "checkpoint": None},
                     training={"epochs": 2, "batch_size": 100, "unlabelled_batch_size": 50},
                     evaluation={"agreement_k": 5},
                     search={"num_candidates": 2, "strategy": "random", "metric": "cross_agreement"},
                     resources={"measure_latency": False})
    config = validate_config(tree)
    console = Console(record=True, width=400)
    outcome = run_search(config, console)
    text = console.export_text()
    assert "unlabelled pool: 280 images" in text and "120 more pool images held back from training" in text
    assert "gallery model embedded 1600 images once" in text  # the pool's 400 in all, each once
    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    parent = tracker.client.get_run(outcome.parent_run_id)
    inputs = {next(tag.value for tag in item.tags if tag.key == DATASET_CONTEXT_TAG): item.dataset
              for item in parent.inputs.dataset_inputs}
    assert {"unlabelled", "unlabelled_agreement"} <= set(inputs)
    candidates = [run for run in tracker.child_runs(outcome.parent_run_id) if run.data.tags[ROLE_TAG] == ROLE_CANDIDATE]
    assert len(candidates) == 2
    for run in candidates:
        history = tracker.client.get_metric_history(run.info.run_id, "cross_agreement")
        assert [point.step for point in history] == [1, 2]  # every epoch: the ranking metric
        assert 0 <= run.data.metrics["final_cross_agreement"] <= 100
        assert 0 < run.data.metrics["final_heldout_cross_r1"] <= 100
    best = max(run.data.metrics["final_cross_agreement"] for run in candidates)
    assert max(row.score for row in outcome.report.front) == best  # the front is ranked on it
