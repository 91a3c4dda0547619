"""Budgets at the cheap edge of the space: checked before anything is recorded, stated by `cmpnas space
info`, and a search that still ends with fewer candidates than asked is not a success (exit 4)."""

import logging
import time
from types import SimpleNamespace

import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.common.tune_logs import StagingRaceFilter
from orchestrator.config.schema import SearchConfig
from orchestrator.search.shortfall import EXIT_SEARCH_SHORT, find_shortfall
from orchestrator.strategies.feasibility import check_search_budgets
from search_space import BudgetInfeasibleError, create_space
from search_space.budget import budget_admitting, floor_mflops, rounded_up
from tests.conftest import tiny_tree

SPACE = create_space("mnv3_28", embed_dim=128, in_chans=1)
FLOOR = floor_mflops(SPACE)


def _cli(tmp_path, command, *args, **sections):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(tiny_tree(tmp_path, **sections)))
    result = CliRunner().invoke(app, [*command, "--config", str(path), *args], env={"COLUMNS": "200"})
    return SimpleNamespace(exit_code=result.exit_code, text=" ".join(result.output.split()))  # rich wraps lines


# -- what a budget admits -------------------------------------------------------------------------

def test_budgets_below_the_smallest_architecture_are_refused_with_both_figures():
    with pytest.raises(BudgetInfeasibleError, match=rf"search.max_mflops=0.5 is below .*\({FLOOR:.6g} MFLOPs.*"
                                                    r"at least 0\.8262"):
        check_search_budgets(SPACE, SearchConfig(max_mflops=0.5))
    check_search_budgets(SPACE, SearchConfig(max_mflops=0.8262, num_candidates=1))  # the quoted budget is admitted
    with pytest.raises(BudgetInfeasibleError, match=r"search.budgets_mflops=0.1 is below"):
        check_search_budgets(SPACE, SearchConfig(budgets_mflops=[0.1, 3.0]))


def test_a_budget_admitting_fewer_architectures_than_candidates_names_the_budget_that_would_do():
    check_search_budgets(SPACE, SearchConfig(max_mflops=1.05 * FLOOR, num_candidates=8))  # admits 51
    enough = rounded_up(budget_admitting(SPACE, 20))
    with pytest.raises(BudgetInfeasibleError, match=rf"admits only 11 .* search.num_candidates=20: raise it to "
                                                    rf"at least {enough:.4f} MFLOPs .* lower search.num_candidates "
                                                    r"to 11"):
        check_search_budgets(SPACE, SearchConfig(max_mflops=0.85, num_candidates=20))
    check_search_budgets(SPACE, SearchConfig(max_mflops=enough, num_candidates=20))
    # A sweep aims trials at its budgets in turn: the smallest must hold the trials aimed at it.
    with pytest.raises(BudgetInfeasibleError, match=r"search.budgets_mflops: a budget of 0.83 MFLOPs admits only 1"):
        check_search_budgets(SPACE, SearchConfig(budgets_mflops=[0.83, 3.0], num_candidates=4))
    check_search_budgets(SPACE, SearchConfig(budgets_mflops=[0.83, 3.0], num_candidates=4, strategy="nsga2"))


def test_space_info_states_the_feasible_range_and_what_the_configured_budget_admits(tmp_path):
    result = _cli(tmp_path, ["space", "info"], "--set", "gallery.backbone=resnet18", "--set", "search.max_mflops=1.55")
    assert result.exit_code == 0, result.text
    assert "r20_d1k3e3w8-d1k3e3w16-d1k3e3w24-d1k3e3w32-d1k3e3w48 │ 0.8261 │ 148.4x" in result.text
    assert "22.9488 │ 5.3x" in result.text and "paragon 122.63 MFLOPs" in result.text
    assert "1.5500 (configured) │ 1.88 │ 79.1x" in result.text and "a search can run them" in result.text
    refused = _cli(tmp_path, ["space", "info"], "--set", "search.max_mflops=0.5")
    assert refused.exit_code == 0 and "would be refused" in refused.text and "0.8261" in refused.text


def test_a_search_below_the_smallest_architecture_is_refused_before_anything_is_recorded(tmp_path, gallery_dir):
    checkpoint = gallery_dir / "gallery.safetensors"
    result = _cli(tmp_path, ["search"], "--set", f"gallery.checkpoint={checkpoint}", "--set", "search.max_mflops=0.5")
    assert result.exit_code == 2
    assert "search.max_mflops=0.5 is below the smallest architecture" in result.text and "0.8261" in result.text
    assert not (tmp_path / "mlflow.db").exists()


def test_a_budget_the_configuration_alone_refuses_is_refused_before_the_gallery_model_trains(tmp_path):
    """Issue 27: on the default config this took 90 s of gallery training first."""
    started = time.perf_counter()
    result = _cli(tmp_path, ["search"], "--set", "search.max_mflops=0.01", "--set", f"data.root={tmp_path / 'none'}")
    assert result.exit_code == 2
    # Refused by the budget, not by the missing data: nothing was read, trained or written.
    assert "search.max_mflops=0.01 is below the smallest architecture" in result.text, result.text
    assert not (tmp_path / "gallery.safetensors").exists() and not (tmp_path / "out").exists()
    assert time.perf_counter() - started < 30


# -- a search that ends short -----------------------------------------------------------------------

def test_the_reason_a_search_ended_short_says_what_to_change():
    search = SearchConfig(max_mflops=1.0, num_candidates=8, strategy="random")
    assert find_shortfall(search, complete=True, trials_started=8, trials_failed=0, candidates_finished=8) is None
    ran_out = find_shortfall(search, complete=True, trials_started=3, trials_failed=0, candidates_finished=3)
    assert "found only 3 new architecture(s) within 1 MFLOPs" in ran_out.reason
    assert "search.max_mflops" in ran_out.fix and "cmpnas space info" in ran_out.fix
    failed = find_shortfall(search, complete=True, trials_started=8, trials_failed=2, candidates_finished=6)
    assert "2 of 8 trials failed" in failed.reason and "error" in failed.fix
    empty = find_shortfall(search, complete=True, trials_started=8, trials_failed=0, candidates_finished=0)
    assert "empty" in empty.reason
    interrupted = find_shortfall(search, complete=False, trials_started=4, trials_failed=0, candidates_finished=2)
    assert "--resume" in interrupted.fix


def test_tunes_report_of_a_lost_staging_race_is_dropped_and_other_sync_errors_kept():
    staging = "/tmp/ray/session_x/artifacts/2026-12-01_04-39-43/search-360a0598/driver_artifacts"

    def record(error):
        return logging.LogRecord("ray.tune.execution.experiment_state", logging.ERROR, __file__, 1,
                                 "Saving experiment state to storage failed with exception: ", None,
                                 (type(error), error, None))

    race = FileNotFoundError("[Errno 2] Failed to open local file "
                             f"'{staging}/.05fce96b-d92e-411d-a531-93b56880a1f8-tmp-searcher-state-2026.pkl'")
    assert not StagingRaceFilter().filter(record(race))
    for kept in (FileNotFoundError(f"[Errno 2] Failed to open local file '{staging}/experiment_state.json'"),
                 PermissionError(f"'{staging}/.05fce96b-d92e-411d-a531-93b56880a1f8-tmp-x'")):
        assert StagingRaceFilter().filter(record(kept))


@pytest.mark.integration
def test_a_search_that_runs_out_of_architectures_exits_4_records_why_and_prints_no_traceback(
        tmp_path, gallery_dir, shared_ray, monkeypatch, capfd):
    # The budget admits the smallest architecture only; the up-front check would refuse two candidates,
    # so it is skipped here to reach the end of a search that runs out.
    monkeypatch.setattr("orchestrator.search.driver.check_search_budgets", lambda space, search: None)
    monkeypatch.setattr("orchestrator.search.driver.check_budgets_before_set_up", lambda config: None)
    checkpoint = gallery_dir / "gallery.safetensors"
    result = _cli(tmp_path, ["search"], "--set", f"gallery.checkpoint={checkpoint}",
                  data={"train_size": 600, "query_size": 200, "gallery_size": 400}, training={"epochs": 1},
                  search={"strategy": "random", "num_candidates": 2, "max_mflops": FLOOR})
    captured = capfd.readouterr()
    assert result.exit_code == EXIT_SEARCH_SHORT, result.text
    assert "the search ended short" in result.text and "found only 1 new architecture(s)" in result.text
    assert "Traceback" not in captured.out + captured.err + result.text

    from orchestrator.tracking.client import SearchTracker
    from orchestrator.tracking.tags import SHORTFALL_TAG

    tracker = SearchTracker.open_existing(f"sqlite:///{tmp_path / 'mlflow.db'}", "cmpnas-test")
    parent = tracker.client.get_run(tracker.latest_search_run_id())
    assert parent.info.status == "FINISHED" and "found only 1 new architecture" in parent.data.tags[SHORTFALL_TAG]
    assert parent.data.metrics["candidates_asked"] == 2 and parent.data.metrics["candidates_finished"] == 1
