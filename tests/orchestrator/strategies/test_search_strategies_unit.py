"""Strategies without trials: NSGA-II through an Optuna study's ask/tell, budget sweep, predictor screening,
convergence metrics. A cheap additive cost stands in for fvcore where only the arithmetic of a
strategy is under test, and the analytic FLOPs estimate (equal to fvcore's count, see
tests/search_space/test_flops.py) where budgets steer proposals; the integration test measures
real FLOPs."""

import random
from types import SimpleNamespace

import numpy as np
import optuna
import pytest
from ray.tune.search import Searcher
from scipy.stats import spearmanr

from orchestrator.config import ConfigError, validate_config
from orchestrator.config.schema import SearchConfig
from orchestrator.results.budget import best_per_budget
from orchestrator.results.front import CandidateRow, ParetoReport
from orchestrator.strategies import SearchRequest, create_searcher
from orchestrator.strategies.budget_sweep import BudgetSweepProposer
from orchestrator.strategies.feasibility import check_strategy_settings
from orchestrator.strategies.predictor import RidgeAccuracyPredictor
from orchestrator.strategies.random_search import RandomProposer
from orchestrator.strategies.screening import PredictorScreenedProposer
from orchestrator.tracking.client import SearchTracker
from orchestrator.tracking.convergence import SearchConvergenceCallback
from search_space import ArchSpec, BudgetInfeasibleError, create_space, estimate_mflops
from search_space.budget import floor_mflops

SPACE = create_space("mnv3_28", embed_dim=64, in_chans=1)


def flops(spec: ArchSpec) -> float:
    return estimate_mflops(SPACE, spec)


def additive_cost(spec: ArchSpec) -> float:
    """Grows with every gene, like FLOPs: the sum of choice indices, 0 for the smallest architecture."""
    return float(sum(choices.index(value) for (_, choices), value in zip(SPACE.genes(), SPACE.to_genes(spec))))


def accuracy_of(spec: ArchSpec) -> float:
    return 40.0 + additive_cost(spec) / 4


# -- NSGA-II -------------------------------------------------------------------------------------

def nsga2(max_mflops=None, population=4, seed=0, cost=additive_cost):
    config = SearchConfig(strategy="nsga2", seed=seed, max_mflops=max_mflops, nsga2={"population_size": population})
    return create_searcher(SearchRequest(SPACE, config, "cross_map", cost))


def test_nsga2_runs_optunas_sampler_and_learns_from_both_objectives():
    searcher = nsga2()
    assert isinstance(searcher.study.sampler, optuna.samplers.NSGAIISampler)
    assert searcher.study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    seen = set()
    for index in range(10):
        config = searcher.suggest(f"t{index}")
        spec = ArchSpec.from_json(config["arch"])
        assert SPACE.contains(spec) and spec.arch_id not in seen
        seen.add(spec.arch_id)
        # Tune sees per-epoch results without the cost; the final one carries both objectives.
        searcher.on_trial_result(f"t{index}", {"cross_map": 1.0, "epoch": 1})
        searcher.on_trial_complete(f"t{index}", {"cross_map": accuracy_of(spec), "mflops": additive_cost(spec)})
    complete = searcher.study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert searcher.observed == 10 and len(complete) >= 10
    generations = {t.system_attrs.get("NSGAIISampler:generation", 0) for t in complete}
    assert max(generations) >= 1, "after a population of results NSGA-II breeds a new generation"


def test_nsga2_starts_within_the_budget_and_repairs_children_over_it():
    budget = 1.2
    searcher = nsga2(max_mflops=budget, cost=flops)
    trained = []
    for index in range(12):
        spec = ArchSpec.from_json(searcher.suggest(f"t{index}")["arch"])
        trained.append(spec)
        searcher.on_trial_complete(f"t{index}", {"cross_map": accuracy_of(spec), "mflops": flops(spec)})
    assert all(flops(spec) <= budget for spec in trained) and len({spec.arch_id for spec in trained}) == 12
    trials = searcher.study.get_trials()
    first_generation = [t for t in trials if t.system_attrs.get("NSGAIISampler:generation") == 0]
    assert len(first_generation) >= 4 and all(t.constraints["flops"] <= 0 for t in first_generation[:4]), (
        "generation 0 is drawn within the budget")
    infeasible = [t for t in trials if t.constraints.get("flops", 0) > 0]
    assert infeasible and all(t.state == optuna.trial.TrialState.COMPLETE for t in infeasible), (
        "children over the budget are told with their violation, and never trained")
    repaired = [t for t in trials if "fixed_params" in t.system_attrs and t.number > 3]
    assert len(repaired) >= len(infeasible) - 1, "each one over the budget is followed by its repaired child"


def test_nsga2_prunes_unmeasured_trials():
    searcher = nsga2(max_mflops=2.0, cost=flops)
    specs = {trial_id: ArchSpec.from_json(searcher.suggest(trial_id)["arch"]) for trial_id in "abc"}
    numbers = {trial_id: searcher.pending[trial_id][0] for trial_id in "abc"}
    searcher.on_trial_complete("a", {"cross_map": 50.0, "mflops": flops(specs["a"])})
    searcher.on_trial_complete("b", {"cross_map": 30.0, "epoch": 1})  # stopped by ASHA: no cost reported
    searcher.on_trial_complete("c", None, error=True)
    trials = searcher.study.get_trials()
    states = [trials[numbers[trial_id]].state for trial_id in "abc"]
    assert states == [optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL]
    assert searcher.observed == 1
    assert not any(t.state == optuna.trial.TrialState.RUNNING for t in searcher.study.get_trials())


def test_nsga2_ends_the_search_when_nothing_new_fits(caplog):
    searcher = nsga2(max_mflops=floor_mflops(SPACE), cost=flops)  # admits the smallest architecture only
    searcher.max_asks = 20
    assert ArchSpec.from_json(searcher.suggest("a")["arch"]) == SPACE.smallest()
    assert searcher.suggest("b") == Searcher.FINISHED and searcher.exhausted
    assert "max_mflops" in caplog.text


def test_nsga2_state_survives_save_and_restore(tmp_path):
    searcher = nsga2(seed=5)
    for index in range(3):
        spec = ArchSpec.from_json(searcher.suggest(str(index))["arch"])
        searcher.on_trial_complete(str(index), {"cross_map": accuracy_of(spec), "mflops": additive_cost(spec)})
    searcher.save(str(tmp_path / "nsga2.pkl"))
    restored = nsga2(seed=99)
    restored.restore(str(tmp_path / "nsga2.pkl"))
    assert restored.observed == 3 and restored.known == searcher.known


# -- budget sweep ---------------------------------------------------------------------------------

def test_budget_sweep_targets_every_budget_in_turn_and_shares_evaluations():
    budgets = [1.0, 2.0, 6.0]
    config = SearchConfig(strategy="evolution", budgets_mflops=budgets, seed=2,
                          evolution={"population_size": 2, "sample_size": 2})
    searcher = create_searcher(SearchRequest(SPACE, config, "cross_map", flops))
    sweep = searcher.proposer
    assert isinstance(sweep, BudgetSweepProposer)
    costs = []
    for index in range(9):
        spec = ArchSpec.from_json(searcher.suggest(str(index))["arch"])
        costs.append(flops(spec))
        searcher.on_trial_complete(str(index), {"cross_map": accuracy_of(spec)})
    for turn, cost in enumerate(costs):
        assert cost <= budgets[turn % 3], (turn, costs)
    assert searcher.attempts == 9, "every proposal of every budget is new and within it"
    observed = [proposer.observed for proposer in sweep.proposers]
    assert observed[0] < observed[1] <= observed[2] and observed[0] >= 3, "cheap candidates count for larger budgets"


def test_budgets_below_the_smallest_architecture_are_refused():
    with pytest.raises(BudgetInfeasibleError, match="budgets_mflops"):
        create_searcher(SearchRequest(SPACE, SearchConfig(budgets_mflops=[0.01, 5.0]), "cross_map",
                                      lambda spec: additive_cost(spec) + 1.0))


def _row(run_id, mflops, cross_map):
    return CandidateRow(run_id, run_id, mflops, 1, 1.0, cross_map, cross_map, cross_map, 1.0, score=cross_map)


def test_best_per_budget_counts_each_candidate_for_every_budget_it_fits():
    report = ParetoReport([_row("a", 0.9, 50.0), _row("b", 1.8, 60.0), _row("c", 2.9, 55.0)], None)
    picks = best_per_budget(report, [3.0, 1.0, 2.0, 0.5])
    assert [(p.budget_mflops, p.best.run_id if p.best else None) for p in picks] == [
        (0.5, None), (1.0, "a"), (2.0, "b"), (3.0, "b")]
    assert [p.alias for p in picks] == ["budget-500kflops", "budget-1000kflops", "budget-2000kflops",
                                        "budget-3000kflops"]


# -- predictor ------------------------------------------------------------------------------------

def test_ridge_predictor_ranks_an_additive_target_correctly():
    rng = random.Random(0)
    train = [SPACE.sample(rng) for _ in range(60)]
    test = [SPACE.sample(rng) for _ in range(30)]
    predictor = RidgeAccuracyPredictor(SPACE, l2=0.1).fit(train, [accuracy_of(spec) for spec in train])
    predicted = predictor.predict(test)
    assert spearmanr(predicted, [accuracy_of(spec) for spec in test]).statistic > 0.95
    with pytest.raises(RuntimeError, match="predict before fit"):
        RidgeAccuracyPredictor(SPACE).predict(test)


def test_screening_proposes_the_best_predicted_and_records_it_before_the_trial():
    predictions = {}
    screened = PredictorScreenedProposer(RandomProposer(SPACE), RidgeAccuracyPredictor(SPACE, l2=0.1),
                                         candidates_per_proposal=16, min_observations=20,
                                         constraint=lambda spec: additive_cost(spec) <= 25, predictions=predictions)
    rng = random.Random(1)
    for _ in range(20):  # before min_observations: the wrapped proposer unchanged, no forecasts
        spec = screened.propose(rng)
        screened.suggested(spec)
        screened.observe(spec, accuracy_of(spec))
    assert predictions == {}
    unscreened = [accuracy_of(SPACE.sample(random.Random(seed))) for seed in range(16)]
    chosen = []
    for _ in range(5):
        spec = screened.propose(rng)
        screened.suggested(spec)
        chosen.append(spec)
        assert spec.arch_id in predictions and additive_cost(spec) <= 25
        screened.observe(spec, accuracy_of(spec))
    assert np.mean([accuracy_of(spec) for spec in chosen]) > np.mean(unscreened)


# -- convergence on the parent run ----------------------------------------------------------------

def test_hypervolume_and_predictor_spearman_are_logged_after_each_ended_trial(tmp_path):
    tracker = SearchTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "convergence")
    parent = tracker.start_parent("search", tags={})
    specs = [SPACE.sample(random.Random(seed)) for seed in range(4)]
    predictions = {specs[0].arch_id: 10.0, specs[1].arch_id: 20.0, specs[3].arch_id: 30.0}
    callback = SearchConvergenceCallback(tracker, parent, paragon_mflops=60.0, predictions=predictions)
    results = [{"cross_map": 40.0, "mflops": 2.0, "homo_r1": 1.0}, {"cross_map": 50.0, "mflops": 3.0, "homo_r1": 1.0},
               {"cross_map": 20.0, "epoch": 1}, {"cross_map": 55.0, "mflops": 4.0, "homo_r1": 1.0}]
    for spec, result in zip(specs, results):
        callback.on_trial_complete(0, [], SimpleNamespace(config={"arch": spec.to_json()}, last_result=result))
    callback.on_trial_error(0, [], SimpleNamespace(config={"arch": specs[0].to_json()}, last_result=None))
    history = tracker.client.get_metric_history(parent, "hypervolume")
    assert [point.step for point in history] == [1, 2, 3, 4, 5]
    values = [point.value for point in history]
    assert values == sorted(values), "adding candidates never lowers the hypervolume"
    assert values[0] == pytest.approx(40.0 * (60.0 - 2.0))
    assert values[2] == values[1], "a stopped trial adds no point"
    spearman_history = tracker.client.get_metric_history(parent, "predictor_spearman")
    assert [(p.step, p.value) for p in spearman_history] == [(4, pytest.approx(1.0)), (5, pytest.approx(1.0))]


def test_strategy_options_that_cannot_work_are_refused_naming_the_field():
    with pytest.raises(ConfigError, match="budgets_mflops"):
        validate_config({"search": {"max_mflops": 2.0, "budgets_mflops": [1.0, 3.0]}})
    screened_nsga2 = validate_config({"search": {"strategy": "nsga2", "predictor": {"enabled": True}}})
    with pytest.raises(ConfigError, match="predictor.enabled"):  # before any work (the driver's first check)
        check_strategy_settings(screened_nsga2.search)
    with pytest.raises(ConfigError, match="grace_period"):
        validate_config({"search": {"scheduler": "asha", "asha": {"grace_period": 3}}, "training": {"epochs": 3}})
    assert validate_config({"search": {"budgets_mflops": [3.0, 1.0]}}).search.proposal_limit_mflops == 3.0


def test_a_trial_stopped_early_ends_finished_tagged_and_outside_the_report(tmp_path):
    from orchestrator.results.front import collect_report
    from orchestrator.tracking.callbacks import MlflowTrialCallback
    from orchestrator.tracking.tags import STOPPED_EARLY_TAG

    tracker = SearchTracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "stopped")
    parent = tracker.start_parent("search", tags={})
    callback = MlflowTrialCallback(tracker, parent)
    spec = SPACE.smallest()
    final = {"epoch": 2, "cross_map": 50.0, "cross_r1": 60.0, "flops": 900000, "mflops": 0.9, "homo_r1": 55.0}
    trials = {"full": SimpleNamespace(trial_id="full", config={"arch": spec.to_json()}, checkpoint=None,
                                      last_result=final),
              "stopped": SimpleNamespace(trial_id="stopped", config={"arch": SPACE.largest().to_json()},
                                         checkpoint=None, last_result={"epoch": 1, "cross_map": 10.0})}
    for trial in trials.values():
        callback.on_trial_start(0, [], trial)
        callback.on_trial_result(0, [], trial, trial.last_result)
        callback.on_trial_complete(0, [], trial)
    runs = {run.data.tags["cmpnas.trial_id"]: run for run in tracker.child_runs(parent)}
    assert runs["stopped"].info.status == "FINISHED" and runs["stopped"].data.tags[STOPPED_EARLY_TAG] == "true"
    assert runs["stopped"].data.metrics["stopped_at_epoch"] == 1
    assert STOPPED_EARLY_TAG not in runs["full"].data.tags
    assert [row.run_id for row in collect_report(tracker, parent).candidates] == [runs["full"].info.run_id]


# -- any Optuna sampler, through the study's ask/tell ---------------------------------------------

def optuna_search(**optuna_settings):
    config = SearchConfig(strategy="optuna", seed=0, max_mflops=2.0, optuna=optuna_settings)
    return create_searcher(SearchRequest(SPACE, config, "cross_map", flops, name="cmpnas-search-test"))


@pytest.mark.parametrize("sampler", ["TPESampler", "RandomSampler", "QMCSampler", "NSGAIIISampler"])
def test_an_optuna_sampler_searches_within_the_budget_and_learns_both_objectives(sampler):
    searcher = optuna_search(sampler=sampler)
    assert type(searcher.study.sampler).__name__ == sampler
    seen = set()
    for index in range(12):
        spec = ArchSpec.from_json(searcher.suggest(f"t{index}")["arch"])
        assert flops(spec) <= 2.0 and spec.arch_id not in seen
        seen.add(spec.arch_id)
        searcher.on_trial_complete(f"t{index}", {"cross_map": accuracy_of(spec), "mflops": flops(spec)})
    assert searcher.observed == 12
    told = searcher.study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert all(len(trial.values) == 2 for trial in told)


def test_a_sampler_that_cannot_be_built_is_refused_before_any_work_naming_the_field():
    with pytest.raises(ConfigError, match=r"search.optuna.sampler: 'Nope' is not a sampler of optuna.samplers"):
        check_strategy_settings(SearchConfig(strategy="optuna", optuna={"sampler": "Nope"}))
    with pytest.raises(ConfigError, match=r"search.optuna.sampler_options: TPESampler\(.*n_startup=3.*\) is refused"):
        check_strategy_settings(SearchConfig(strategy="optuna", optuna={"sampler_options": {"n_startup": 3}}))
    check_strategy_settings(SearchConfig(strategy="optuna", optuna={"sampler_options": {"n_startup_trials": 3}}))


def test_a_study_kept_in_a_storage_is_what_optuna_dashboard_reads_and_survives_tunes_pickle(tmp_path):
    import pickle

    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    searcher = optuna_search(sampler="RandomSampler", storage=storage)
    for index in range(3):
        spec = ArchSpec.from_json(searcher.suggest(f"t{index}")["arch"])
        searcher.on_trial_complete(f"t{index}", {"cross_map": accuracy_of(spec), "mflops": flops(spec)})
    study = optuna.load_study(study_name="cmpnas-search-test", storage=storage)  # what optuna-dashboard opens
    assert len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE])) == 3
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    restored = pickle.loads(pickle.dumps(searcher))  # as Tune keeps it in tuner.pkl: by name, not by engine
    assert restored.study is not searcher.study and len(restored.study.trials) == len(searcher.study.trials)
    searcher.save(str(tmp_path / "searcher.pkl"))
    again = optuna_search(sampler="RandomSampler", storage=storage)
    again.restore(str(tmp_path / "searcher.pkl"))
    assert again.observed == 3 and again.known == searcher.known
