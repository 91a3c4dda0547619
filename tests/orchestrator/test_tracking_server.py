"""A search against a real `mlflow server` process over HTTP, artifacts uploaded through the server."""

import pytest
from rich.console import Console

from orchestrator.config import validate_config
from orchestrator.driver import run_search
from orchestrator.tracking import SearchTracker
from tests.conftest import tiny_tree

pytestmark = pytest.mark.integration


def test_search_records_everything_on_a_tracking_server(mlflow_server, gallery_dir, tmp_path, monkeypatch):
    url, artifact_root = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # MLflow's standard variable, as server users set it
    monkeypatch.chdir(tmp_path)
    tree = tiny_tree(tmp_path, gallery={"checkpoint": str(gallery_dir / "gallery.safetensors")},
                     search={"num_candidates": 2, "strategy": "random"}, training={"epochs": 1},
                     tracking={"uri": None})
    outcome = run_search(validate_config(tree), Console(quiet=True))
    tracker = SearchTracker.open_existing(url, "cmpnas-test")
    children = tracker.child_runs(outcome.parent_run_id)
    assert len(children) == 2 and all(run.info.status == "FINISHED" for run in children)
    assert all("final_cross_map" in run.data.metrics for run in children)
    assert not (tmp_path / "mlflow.db").exists(), "the configured sqlite store must not be used"
    stored = {path.name for path in artifact_root.rglob("*") if path.is_file()}
    assert {"pareto.csv", "pareto.png", "model.safetensors", "arch.json"} <= stored
