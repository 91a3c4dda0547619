"""Every strategy through the same real driver: local Ray, sqlite MLflow, fvcore, FAISS, real images.

Three tiny searches, one per strategy, each exercising one more part: random search under ASHA,
evolution as a budget sweep screened by the accuracy predictor, NSGA-II (Optuna) under ASHA. Each
search runs once, in the first test that asks for it.
"""

import csv

import pytest
from rich.console import Console

from orchestrator.config import validate_config
from orchestrator.results.budget import BUDGET_TAG
from orchestrator.search.driver import run_search
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.tags import PARETO_TAG, STOPPED_EARLY_TAG
from tests.conftest import tiny_tree

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]

ASHA = {"scheduler": "asha", "asha": {"grace_period": 1, "reduction_factor": 4}}
SEARCHES = {
    "random+asha": {"strategy": "random", "num_candidates": 4, **ASHA},
    # one trial at a time, so the third is proposed after two results: screened by the predictor
    "evolution+budgets+predictor": {
        "strategy": "evolution", "num_candidates": 3, "max_concurrent": 1, "max_mflops": None,
        "budgets_mflops": [1.0, 2.5],
        "predictor": {"enabled": True, "min_observations": 2, "candidates_per_proposal": 4}},
    "nsga2+asha": {"strategy": "nsga2", "num_candidates": 4, "nsga2": {"population_size": 2}, **ASHA},
}


@pytest.fixture(scope="module")
def searches(gallery_dir, tmp_path_factory):
    """``searches(name)`` -> (config, outcome, tracker); each search runs on first request."""
    outcomes = {}

    def get(name):
        if name not in outcomes:
            folder = tmp_path_factory.mktemp(name.replace("+", "-"))
            config = validate_config(tiny_tree(
                folder, gallery={"checkpoint": str(gallery_dir / "gallery.safetensors")},
                data={"train_size": 600, "query_size": 200, "gallery_size": 400}, search=SEARCHES[name]))
            outcome = run_search(config, Console(quiet=True))
            tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
            outcomes[name] = (config, outcome, tracker)
        return outcomes[name]

    return get


@pytest.mark.parametrize("name", list(SEARCHES))
def test_every_strategy_runs_through_the_driver_and_produces_a_front(searches, name):
    config, outcome, tracker = searches(name)
    parent = tracker.client.get_run(outcome.parent_run_id)
    assert parent.info.status == "FINISHED"
    children = tracker.child_runs(outcome.parent_run_id)
    assert len(children) == config.search.num_candidates
    assert len({run.data.params["arch_id"] for run in children}) == len(children)
    finished = [run for run in children if "final_mflops" in run.data.metrics]
    assert outcome.report.front and {row.run_id for row in outcome.report.candidates} == {r.info.run_id for r in finished}
    assert all(run.data.tags[PARETO_TAG] in ("true", "false") for run in finished)
    assert parent.data.metrics["strategy_results_observed"] >= len(finished)
    # hypervolume after every ended trial, never decreasing, against the stated reference point
    history = sorted(tracker.client.get_metric_history(outcome.parent_run_id, "hypervolume"), key=lambda p: p.step)
    assert [point.step for point in history] == list(range(1, len(children) + 1))
    assert all(a.value <= b.value for a, b in zip(history, history[1:])) and history[-1].value > 0
    paragon_mflops = parent.data.metrics["paragon_mflops"]
    best_box = max(run.data.metrics["final_cross_map"] * (paragon_mflops - run.data.metrics["final_mflops"])
                   for run in finished)
    assert history[-1].value >= best_box - 1e-6


def test_asha_stops_weak_trials_before_the_last_epoch_and_they_end_cleanly(searches):
    stopped = []
    for name in SEARCHES:
        config, outcome, tracker = searches(name)
        children = tracker.child_runs(outcome.parent_run_id)
        runs_stopped = [run for run in children if run.data.tags.get(STOPPED_EARLY_TAG) == "true"]
        if config.search.scheduler == "fifo":
            assert not runs_stopped, name
        assert tracker.client.get_run(outcome.parent_run_id).data.metrics["trials_stopped_early"] == len(runs_stopped)
        csv_ids = {row["run_id"] for row in csv.DictReader((outcome.output_dir / "pareto.csv").open())}
        for run in runs_stopped:
            assert run.info.status == "FINISHED"
            assert "final_mflops" not in run.data.metrics and run.data.tags.get(PARETO_TAG) is None
            assert run.data.metrics["stopped_at_epoch"] < config.training.epochs
            assert run.info.run_id not in csv_ids
            # it trailed a trial that reached the same epoch first
            epoch = int(run.data.metrics["stopped_at_epoch"])
            at_rung = {other.info.run_id: [p.value for p in tracker.client.get_metric_history(other.info.run_id,
                                                                                               "cross_map")
                                           if p.step == epoch][0] for other in children}
            assert at_rung[run.info.run_id] < max(at_rung.values())
        stopped.extend(runs_stopped)
    assert stopped, "ASHA stopped no trial before its last epoch"


def test_budget_sweep_returns_one_candidate_per_budget_within_it(searches):
    config, outcome, tracker = searches("evolution+budgets+predictor")
    parent = tracker.client.get_run(outcome.parent_run_id)
    rows = list(csv.DictReader((outcome.output_dir / "budget_sweep.csv").open()))
    assert [float(row["budget_mflops"]) for row in rows] == config.search.budgets_mflops
    for row, budget in zip(rows, config.search.budgets_mflops):
        chosen = tracker.client.get_run(row["run_id"])
        measured = chosen.data.metrics["final_mflops"]  # fvcore, measured inside the trial
        assert measured <= budget
        within = [run for run in tracker.child_runs(outcome.parent_run_id)
                  if run.data.metrics.get("final_mflops", float("inf")) <= budget]
        assert chosen.data.metrics["final_cross_map"] == max(run.data.metrics["final_cross_map"] for run in within)
        assert parent.data.tags[row["alias"]] == row["run_id"]
        assert row["alias"] in chosen.data.tags[BUDGET_TAG].split(",")
        assert parent.data.metrics[f"{row['alias'].replace('-', '_')}_mflops"] == pytest.approx(measured)
    assert "budget_sweep.csv" in {item.path for item in tracker.client.list_artifacts(outcome.parent_run_id)}


def test_predictor_forecasts_trials_before_they_run(searches):
    _, outcome, tracker = searches("evolution+budgets+predictor")
    metrics = tracker.client.get_run(outcome.parent_run_id).data.metrics
    assert metrics["predictor_predictions"] >= 1
