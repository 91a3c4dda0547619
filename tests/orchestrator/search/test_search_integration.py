"""A tiny real search: local Ray cluster, real MLflow sqlite store, real data, FAISS and fvcore."""

import json

import pytest
from typer.testing import CliRunner

from evaluators import pareto_front
from orchestrator.cli import app
from orchestrator.tracking.tags import PARETO_TAG
from search_space import ArchSpec, create_space
from workers.gallery.model import load_gallery

pytestmark = pytest.mark.integration


def test_parent_run_records_config_paragon_and_gallery_fingerprint(finished_search, gallery_dir):
    config, outcome, tracker, _ = finished_search
    parent = tracker.client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    assert parent.data.params["search.num_candidates"] == "3"
    assert parent.data.tags["gallery_fingerprint"] == load_gallery(gallery_dir / "gallery.safetensors").fingerprint
    assert parent.data.metrics["paragon_r1"] > 50
    assert parent.data.metrics["paragon_mflops"] > 10
    artifacts = {item.path for item in tracker.client.list_artifacts(outcome.parent_run_id)}
    assert {"pareto.csv", "pareto.png", "config.json"} <= artifacts


def test_gallery_embedded_once_per_search_whatever_the_trial_count(finished_search):
    config, outcome, tracker, _ = finished_search
    once = config.data.train_size + config.data.query_size + config.data.gallery_size
    assert outcome.gallery_images_embedded == once
    assert tracker.client.get_run(outcome.parent_run_id).data.metrics["gallery_images_embedded"] == once
    assert len(tracker.child_runs(outcome.parent_run_id)) == config.search.num_candidates > 1


def test_the_strategy_learns_from_every_finished_trial(finished_search):
    config, outcome, tracker, _ = finished_search
    metrics = tracker.client.get_run(outcome.parent_run_id).data.metrics
    assert metrics["strategy_results_observed"] == config.search.num_candidates
    assert metrics["trials_failed"] == 0


def test_trials_run_in_reused_worker_processes_one_per_slot(finished_search):
    config, outcome, _, _ = finished_search
    # Tune's own saved experiment state: every trial's last result carries the worker's pid.
    (state_file,) = outcome.output_dir.glob("ray_results/search-*/experiment_state-*.json")
    trials = [json.loads(runtime) for _, runtime in json.loads(state_file.read_text())["trial_data"]]
    pids = {trial["last_result"]["pid"] for trial in trials}
    assert len(trials) == config.search.num_candidates > config.search.max_concurrent
    assert len(pids) <= config.search.max_concurrent, "a new worker process per trial idles its slot at every start"


def test_one_child_run_per_candidate_with_epochs_flops_and_cross_model_metrics(finished_search):
    config, outcome, tracker, _ = finished_search
    parent_metrics = tracker.client.get_run(outcome.parent_run_id).data.metrics
    space = create_space("mnv3_28", embed_dim=config.gallery.embed_dim, in_chans=1)
    children = tracker.child_runs(outcome.parent_run_id)
    assert len(children) == config.search.num_candidates
    assert len({run.data.params["arch_id"] for run in children}) == len(children)
    for run in children:
        metrics = run.data.metrics
        assert run.info.status == "FINISHED"
        assert space.contains(ArchSpec.from_json(run.data.params["arch_json"]))
        assert 0 < metrics["final_mflops"] <= config.search.max_mflops
        assert metrics["final_cost_reduction"] == pytest.approx(parent_metrics["paragon_flops"] / metrics["final_flops"])
        for key in ("final_cross_r1", "final_cross_map", "final_homo_r1", "final_params", "final_latency_ms"):
            assert key in metrics, key
        assert json.loads(run.data.params["flops_skipped_ops"])  # fvcore's skipped ops are on record
        history = tracker.client.get_metric_history(run.info.run_id, "cross_r1")
        assert sorted(point.step for point in history) == list(range(1, config.training.epochs + 1))
        artifacts = {item.path for item in tracker.client.list_artifacts(run.info.run_id, "model")}
        assert {"model/model.safetensors", "model/arch.json"} <= artifacts


def test_pareto_tags_match_the_front_of_the_recorded_metrics(finished_search):
    _, outcome, tracker, printed = finished_search
    children = tracker.child_runs(outcome.parent_run_id)
    points = [(run.data.metrics["final_cross_map"], run.data.metrics["final_mflops"]) for run in children]
    expected = {children[i].info.run_id for i in pareto_front(points, ("max", "min"))}
    tagged = {run.info.run_id for run in children if run.data.tags[PARETO_TAG] == "true"}
    assert tagged == expected and tagged
    assert "Pareto front" in printed and "paragon" in printed
    csv_rows = (outcome.output_dir / "pareto.csv").read_text().splitlines()
    assert len(csv_rows) == 1 + len(children)


def test_pareto_command_reads_the_front_back_from_mlflow(finished_search):
    config, outcome, tracker, _ = finished_search
    result = CliRunner().invoke(app, ["pareto", "--tracking-uri", config.tracking.uri,
                                      "--experiment", config.tracking.experiment], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    front = [row.arch_id for row in outcome.report.front]
    assert all(arch_id in result.output for arch_id in front)
