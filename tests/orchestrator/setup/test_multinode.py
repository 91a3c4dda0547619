"""A search on a real multi-node Ray cluster (head plus two worker nodes on this machine), tracked
on a real `mlflow server` over HTTP (found through MLFLOW_TRACKING_URI, artifacts uploaded through
the server), with cmpnas's code shipped in the runtime environment."""

import pytest
import ray
from ray.cluster_utils import Cluster
from rich.console import Console

from orchestrator.config import validate_config
from orchestrator.search.driver import run_search
from orchestrator.tracking.client import SearchTracker
from tests.conftest import tiny_tree

pytestmark = pytest.mark.integration


@pytest.fixture
def three_node_cluster():
    # The head has no CPUs for trials, so trials must be placed on the worker nodes. No dashboard: the serve
    # extra installs its packages, and Ray would then start one on the head by default, slowing the start.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    try:
        yield cluster
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()


def test_trials_spread_over_nodes_and_everything_lands_on_the_server(three_node_cluster, mlflow_server, gallery_dir,
                                                                      tmp_path, monkeypatch):
    url, artifact_root = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)  # MLflow's standard variable, as server users set it
    monkeypatch.chdir(tmp_path)
    # 1,000 training images: what this test checks is where trials ran and where records landed.
    tree = tiny_tree(tmp_path, gallery={"checkpoint": str(gallery_dir / "gallery.safetensors")},
                     data={"train_size": 1000},
                     search={"num_candidates": 2, "max_concurrent": 2, "strategy": "random"},
                     training={"epochs": 1}, tracking={"uri": None},
                     ray={"address": three_node_cluster.address, "num_cpus": None,
                          "storage_path": str(tmp_path / "shared-storage")})
    outcome = run_search(validate_config(tree), Console(quiet=True))
    tracker = SearchTracker.open_existing(url, "cmpnas-test")
    children = tracker.child_runs(outcome.parent_run_id)
    assert len(children) == 2 and all(run.info.status == "FINISHED" for run in children)
    nodes = {run.data.params["node_id"] for run in children}
    head = three_node_cluster.head_node.node_id
    assert len(nodes) == 2 and head not in nodes, "two concurrent 1-CPU trials need both worker nodes"
    for run in children:
        assert {"final_cross_r1", "final_mflops", "final_cross_map"} <= set(run.data.metrics)
        assert run.data.params["device"] == "cpu"
        assert {a.path for a in tracker.client.list_artifacts(run.info.run_id, "model")} >= {"model/model.safetensors"}
    assert not (tmp_path / "mlflow.db").exists(), "the configured sqlite store must not be used"
    stored = {path.name for path in artifact_root.rglob("*") if path.is_file()}
    assert {"pareto.csv", "pareto.png", "model.safetensors", "arch.json"} <= stored
    assert (tmp_path / "shared-storage").is_dir()
    assert not (tmp_path / "out" / "ray_results").exists()
