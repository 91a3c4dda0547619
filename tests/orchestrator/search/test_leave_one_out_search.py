"""A search with evaluation.held_out: leave_one_out: every held-out image is a query against all the
others, its own image left out; the paragon and the candidates are reported that way (and their latency
timed on their ONNX exports)."""

import pytest

from orchestrator.config import validate_config
from orchestrator.search.driver import run_search
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.tags import ROLE_CANDIDATE, ROLE_TAG
from tests.conftest import tiny_tree

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]


def test_a_leave_one_out_search_scores_every_held_out_image_without_finding_itself(tmp_path):
    from rich.console import Console

    tree = tiny_tree(tmp_path, data={"train_size": 800, "validation_size": 200, "query_size": 150,
                                     "gallery_size": 250},
                     gallery={"epochs": 1, "batch_size": 100, "checkpoint": None}, training={"epochs": 1, "batch_size": 100},
                     search={"num_candidates": 2, "strategy": "random"}, evaluation={"held_out": "leave_one_out"},
                     resources={"measure_latency": True})
    config = validate_config(tree)
    console = Console(record=True, width=400)
    outcome = run_search(config, console)
    assert "pooled (evaluation.held_out: leave_one_out" in console.export_text()
    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    parent = tracker.client.get_run(outcome.parent_run_id)
    assert parent.data.params["evaluation.held_out"] == "leave_one_out"
    assert parent.data.params["query_images"] == "400" and parent.data.params["gallery_images"] == "400"
    # Gallery/gallery on one pool: without leaving each image out, every query would find itself (R@1 100).
    assert parent.data.metrics["paragon_heldout_r1"] < 100
    candidates = [run for run in tracker.child_runs(outcome.parent_run_id) if run.data.tags[ROLE_TAG] == ROLE_CANDIDATE]
    assert len(candidates) == 2
    for run in candidates:
        assert run.data.metrics["final_heldout_homo_r1"] < 100  # its own model on both sides, itself left out
        assert 0 < run.data.metrics["final_heldout_cross_r1"] <= 100
        # Latency on the ONNX export (evaluators.latency), as the paragon's: their ratio is on the front.
        assert run.data.metrics["final_latency_ms"] > 0 and "ONNX Runtime" in run.data.params["latency_method"]
    assert parent.data.metrics["paragon_latency_ms"] > 0
