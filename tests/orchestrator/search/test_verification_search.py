"""A search optimising a verification metric: config rules, and a tiny real face-verification search."""

import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from evaluators import pareto_front
from orchestrator.cli import app
from orchestrator.config import ConfigError, load_config, validate_config
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.tags import PARETO_TAG
from tests.conftest import tiny_tree

REPO = Path(__file__).resolve().parents[3]


def test_faces_config_searches_a_verification_metric():
    config = load_config(REPO / "configs" / "faces.yaml")
    assert config.data.source == "orl_faces" and config.evaluation.task == "verification"
    assert config.search.metric == "cross_tar_far_1e-2"
    assert load_config(None).search.metric == "cross_map"  # the embedded default: retrieval mAP


def test_a_metric_the_task_does_not_report_is_refused_naming_the_fields():
    with pytest.raises(ConfigError, match=r"search.metric: 'cross_tar_far_1e-2' .*evaluation.task='retrieval'.*"
                                          r"set evaluation.task to 'verification'"):
        validate_config({"search": {"metric": "cross_tar_far_1e-2"}})
    with pytest.raises(ConfigError, match=r"search.metric: 'homo_map' .*allowed values are \['cross_r1'"):
        validate_config({"search": {"metric": "homo_map"}})
    # The allowed values come from the task registry (evaluators.tasks).
    with pytest.raises(ConfigError, match=r"evaluation.task: .*\['retrieval', 'verification'\]"):
        validate_config({"evaluation": {"task": "detection"}})


@pytest.mark.integration
def test_tiny_face_verification_search_records_tar_and_selects_the_front_on_it(tmp_path, shared_ray):
    from rich.console import Console

    from orchestrator.search.driver import run_search

    tree = tiny_tree(
        tmp_path,
        data={"source": "orl_faces", "train_size": None, "query_size": 80, "gallery_size": 120, "image_size": 48},
        gallery={"epochs": 2, "batch_size": 32, "checkpoint": None},
        search_space={"name": "mnv3_64"},
        training={"epochs": 1, "batch_size": 64},
        evaluation={"task": "verification"},
        search={"metric": "cross_tar_far_1e-2", "num_candidates": 2, "max_mflops": 18.0},
        resources={"measure_latency": False},
    )
    config = validate_config(tree)
    outcome = run_search(config, Console(quiet=True))
    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    parent = tracker.client.get_run(outcome.parent_run_id).data
    for name in ("paragon_tar_far_1e-2", "paragon_tar_far_1e-3", "paragon_rank1", "paragon_r1"):
        assert 0 <= parent.metrics[name] <= 100, name
    assert parent.metrics["paragon_rank1"] == pytest.approx(parent.metrics["paragon_r1"])
    assert parent.metrics["stage_tracking_seconds"] > 0 and parent.metrics["search_wall_seconds"] > 0
    children = tracker.child_runs(outcome.parent_run_id)
    assert len(children) == 2
    for run in children:
        metrics = run.data.metrics
        for name in ("cross_tar_far_1e-2", "cross_tar_far_1e-3", "cross_rank1", "homo_tar_far_1e-2"):
            assert 0 <= metrics[f"final_{name}"] <= 100, name
        assert [p.step for p in tracker.client.get_metric_history(run.info.run_id, "cross_tar_far_1e-2")] == [1]
    points = [(run.data.metrics["final_cross_tar_far_1e-2"], run.data.metrics["final_mflops"]) for run in children]
    expected = {children[i].info.run_id for i in pareto_front(points, ("max", "min"))}
    assert {run.info.run_id for run in children if run.data.tags[PARETO_TAG] == "true"} == expected
    assert all(not math.isnan(row.score) for row in outcome.report.candidates)
    assert outcome.report.scoring.metric == "cross_tar_far_1e-2"
    printed = CliRunner().invoke(app, ["pareto", "--tracking-uri", config.tracking.uri,
                                       "--experiment", config.tracking.experiment])
    assert printed.exit_code == 0 and "cross_tar_far_1e-2" in printed.output
