import random

import pytest
from ray.tune.search import Searcher

from evaluators import count_complexity
from orchestrator.config.schema import SearchConfig
from orchestrator.strategies import (
    STRATEGIES,
    ArchitectureSearcher,
    ProposalCost,
    Proposer,
    ProposerStrategy,
    SearchRequest,
    Strategy,
    WithinBudget,
    create_searcher,
    register_strategy,
)
from search_space import ArchSpec, build_query_model, create_space, list_spaces
from search_space.budget import budget_admitting, floor_mflops

SPACE = create_space("mnv3_28", embed_dim=64, in_chans=1)


def request(config: SearchConfig, space=SPACE, **extra) -> SearchRequest:
    return SearchRequest(space, config, "cross_map", ProposalCost(space), **extra)


def fvcore_mflops(spec: ArchSpec) -> float:
    """What a trial records: fvcore's count on the built model."""
    return count_complexity(build_query_model(spec), (spec.in_chans, spec.resolution, spec.resolution)).mflops


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_every_strategy_suggests_unique_in_space_specs(strategy):
    searcher = create_searcher(request(SearchConfig(strategy=strategy, seed=1)))
    specs = []
    for index in range(12):
        spec = ArchSpec.from_json(searcher.suggest(f"t{index}")["arch"])
        specs.append(spec)
        # Every trial's final result carries its FLOPs: NSGA-II's second objective, ignored by the others.
        searcher.on_trial_complete(f"t{index}", {"cross_map": float(spec.resolution), "mflops": 1.0})
    assert all(SPACE.contains(spec) for spec in specs)
    assert len({spec.arch_id for spec in specs}) == len(specs)
    assert searcher.observed == 12


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
@pytest.mark.parametrize("space_name", list_spaces())
def test_a_budget_at_the_edge_of_the_space_yields_every_candidate_quickly(space_name, strategy):
    # 1.05x the smallest architecture: uniform proposals would be refused nearly always there. Where
    # that admits fewer than 50 architectures (ofa_mnv3_224: 34), the budget that admits 50, so that 8
    # distinct candidates are not a coupon-collector draw from a handful.
    space = create_space(space_name, embed_dim=128, in_chans=1)
    budget, num_candidates = max(1.05 * floor_mflops(space), budget_admitting(space, 50)), 8
    config = SearchConfig(strategy=strategy, max_mflops=budget, num_candidates=num_candidates, seed=0)
    cost = ProposalCost(space)  # the analytic count, as the driver's budget gate measures
    searcher = create_searcher(request(config, space, constraint=WithinBudget(cost, budget)))
    specs = []
    for index in range(num_candidates):
        suggestion = searcher.suggest(f"t{index}")
        assert suggestion != Searcher.FINISHED, f"ran out after {index} candidates"
        specs.append(ArchSpec.from_json(suggestion["arch"]))
        searcher.on_trial_complete(f"t{index}", {"cross_map": float(index % 3), "mflops": cost(specs[-1])})
    assert len({spec.arch_id for spec in specs}) == num_candidates
    assert all(fvcore_mflops(spec) <= budget for spec in specs), "within the budget as the trials will measure it"
    assert searcher.attempts <= 4 * num_candidates, f"{searcher.attempts} proposals for {num_candidates} candidates"


def test_results_reach_the_proposer_without_tune_setting_search_properties():
    # Tune forwards TuneConfig's metric only when it owns the search space; ours must not need it.
    searcher = create_searcher(request(SearchConfig(strategy="evolution")))
    searcher.suggest("a")
    searcher.on_trial_complete("a", {"cross_map": 50.0})
    searcher.suggest("b")
    searcher.on_trial_complete("b", {"cross_map": 60.0}, error=True)
    assert searcher.observed == 1 and searcher.proposer.population[0][1] == 50.0


def test_evolution_breeds_from_the_best_of_its_population():
    config = SearchConfig(strategy="evolution", seed=0,
                          evolution={"population_size": 4, "sample_size": 4, "mutation_probability": 0.05,
                                     "crossover_probability": 0.0})
    searcher = create_searcher(request(config))
    population = []
    for index in range(4):
        spec = ArchSpec.from_json(searcher.suggest(f"p{index}")["arch"])
        population.append(spec)
        searcher.on_trial_complete(f"p{index}", {"cross_map": 90.0 if index == 2 else 10.0})
    best = SPACE.to_genes(population[2])
    child = SPACE.to_genes(ArchSpec.from_json(searcher.suggest("child")["arch"]))
    differences = sum(a != b for a, b in zip(best, child))
    assert 1 <= differences <= 4, "a child is a light mutation of the tournament winner"


def test_constraint_filters_proposals_and_exhaustion_ends_the_search(caplog):
    small = create_searcher(request(SearchConfig(strategy="random"), constraint=lambda spec: spec.resolution == 20))
    for index in range(5):
        assert ArchSpec.from_json(small.suggest(str(index))["arch"]).resolution == 20
    impossible = create_searcher(request(SearchConfig(strategy="random"), constraint=lambda spec: False))
    assert impossible.suggest("x") == Searcher.FINISHED
    assert impossible.exhausted and "max_mflops" in caplog.text


def test_searcher_state_survives_save_and_restore(tmp_path):
    searcher = create_searcher(request(SearchConfig(strategy="evolution", seed=3)))
    for index in range(3):
        searcher.suggest(str(index))
        searcher.on_trial_complete(str(index), {"cross_map": float(index)})
    searcher.save(str(tmp_path / "state.pkl"))
    restored = create_searcher(request(SearchConfig(strategy="evolution", seed=99)))
    restored.restore(str(tmp_path / "state.pkl"))
    assert restored.suggest("next") == searcher.suggest("next")


def test_every_builtin_strategy_is_registered_by_its_module():
    assert sorted(STRATEGIES) == ["evolution", "nsga2", "optuna", "random"]
    for name, strategy in STRATEGIES.items():
        assert issubclass(strategy, Strategy) and strategy.name == name
        assert strategy.supports_predictor == issubclass(strategy, ProposerStrategy)


def test_an_unknown_strategy_names_the_field_and_the_allowed_values():
    unchecked = SearchConfig.model_construct(strategy="grid")  # as if validation had been skipped
    with pytest.raises(ValueError, match=r"unknown search.strategy 'grid'; allowed values are "
                                         r"\['evolution', 'nsga2', 'optuna', 'random'\]"):
        create_searcher(request(unchecked))


class UsersProposer(Proposer):
    def propose(self, rng: random.Random) -> ArchSpec:
        return self.space.sample(rng)


@pytest.fixture
def users_strategy():
    @register_strategy
    class UsersStrategy(ProposerStrategy):
        name = "users_strategy"

        def create_proposer(self, space, config):
            return UsersProposer(space)

    yield UsersStrategy
    STRATEGIES.unregister("users_strategy")


def test_a_strategy_registered_at_runtime_is_configured_and_searches_like_a_builtin(users_strategy):
    config = SearchConfig(strategy="users_strategy", predictor={"enabled": True})
    searcher = create_searcher(request(config))
    assert isinstance(searcher, ArchitectureSearcher)
    assert isinstance(searcher.proposer.inner, UsersProposer), "the predictor screens its proposals"
    assert SPACE.contains(ArchSpec.from_json(searcher.suggest("t0")["arch"]))
