"""An open-set search validated on classes that neither train nor are evaluated (data.validation_classes),
ranking its candidates on the label-free neighbour agreement (search.metric: cross_agreement)."""

import csv

import pytest
from rich.console import Console

from orchestrator.config import validate_config
from orchestrator.search.driver import run_search
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.tags import ROLE_CANDIDATE, ROLE_TAG
from tests.conftest import tiny_tree
from workers.gallery.model import load_gallery

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]


def test_an_open_set_search_ranks_on_agreement_over_classes_it_never_trained_on(tmp_path):
    tree = tiny_tree(tmp_path, data={"protocol": "open_set", "train_size": 1500, "query_size": 200,
                                     "gallery_size": 400, "validation_size": 0,
                                     "validation_classes": ["pullover", "coat"]},
                     gallery={"epochs": 1, "batch_size": 100, "checkpoint": None},
                     training={"epochs": 1, "batch_size": 100},
                     search={"num_candidates": 2, "strategy": "random", "metric": "cross_agreement"},
                     evaluation={"agreement_k": 5}, resources={"measure_latency": False})
    config = validate_config(tree)
    console = Console(record=True, width=220)
    outcome = run_search(config, console)
    text = console.export_text()

    # 1,500 images of the 5 train classes: the 600 of pullover and coat validate, the other 900 train.
    assert load_gallery(config.gallery_checkpoint_path).info["train_images"] == 900
    assert "300 query + 300 gallery images of the classes ['pullover', 'coat']" in text

    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    candidates = [run for run in tracker.child_runs(outcome.parent_run_id)
                  if run.data.tags[ROLE_TAG] == ROLE_CANDIDATE]
    assert len(candidates) == 2
    for run in candidates:
        metrics = run.data.metrics
        assert 0 <= metrics["final_cross_agreement"] <= 100 and 0 <= metrics["final_homo_agreement"] <= 100
        assert {"final_cross_r1", "final_heldout_cross_r1"} <= set(metrics)  # labelled scores beside it
        assert len(tracker.client.get_metric_history(run.info.run_id, "cross_agreement")) == 1  # every epoch
    recorded = {run.info.run_id: run.data.metrics["final_cross_agreement"] for run in candidates}
    rows = list(csv.DictReader((outcome.output_dir / "pareto.csv").open()))
    assert {row["searched_metric"] for row in rows} == {"cross_agreement"}
    assert {row["run_id"]: float(row["searched_value"]) for row in rows} == pytest.approx(recorded, abs=0.01)
