"""Named strategies behind one factory, ``create_searcher``.

``random`` and ``evolution`` are proposers run by ``ArchitectureSearcher``; a budget sweep
(``search.budgets_mflops``) runs one such proposer per budget, and the accuracy predictor
(``search.predictor``) wraps whichever proposer results. ``nsga2`` is Optuna's NSGA-II sampler
behind Ray Tune's ``OptunaSearch``.
"""

from __future__ import annotations

from typing import Callable

from orchestrator.config import SearchConfig
from orchestrator.strategies.base import ArchitectureSearcher, Constraint, Proposer
from orchestrator.strategies.budget_sweep import BudgetSweepProposer, check_budgets
from orchestrator.strategies.cost import FlopsCounter
from orchestrator.strategies.evolution import RegularizedEvolutionProposer
from orchestrator.strategies.nsga2 import Nsga2Searcher, create_nsga2_sampler
from orchestrator.strategies.predictor import RidgeAccuracyPredictor
from orchestrator.strategies.random_search import RandomProposer
from orchestrator.strategies.screening import PredictorScreenedProposer
from search_space import SearchSpace

ProposerFactory = Callable[[SearchSpace, SearchConfig], Proposer]
COST_METRIC = "mflops"

STRATEGIES: dict[str, ProposerFactory] = {
    "random": lambda space, config: RandomProposer(space),
    "evolution": lambda space, config: RegularizedEvolutionProposer(
        space,
        population_size=config.evolution.population_size,
        sample_size=config.evolution.sample_size,
        mutation_probability=config.evolution.mutation_probability,
        crossover_probability=config.evolution.crossover_probability,
    ),
}
SEARCHERS = ("nsga2",)  # strategies that are whole Tune searchers, not proposers


def list_strategies() -> list[str]:
    return sorted([*STRATEGIES, *SEARCHERS])


def create_searcher(
    space: SearchSpace, config: SearchConfig, metric: str, mode: str, constraint: Constraint | None = None,
    cost: FlopsCounter | None = None, predictions: dict[str, float] | None = None,
) -> ArchitectureSearcher | Nsga2Searcher:
    """The configured strategy, scored by ``metric`` (Tune only forwards TuneConfig's metric to
    searchers when it owns the search space, which it does not here). ``cost`` measures FLOPs
    (shared with ``constraint`` so each architecture is counted once); ``predictions`` receives
    the predictor's forecast of every trial before it runs."""
    if config.strategy not in list_strategies():
        raise ValueError(f"unknown search.strategy {config.strategy!r}; allowed values are {list_strategies()}")
    cost = cost or FlopsCounter()
    if config.budgets_mflops:
        check_budgets(space, config.budgets_mflops, cost)
    if config.strategy == "nsga2":
        nsga2 = config.nsga2
        sampler = create_nsga2_sampler(nsga2.population_size, nsga2.mutation_probability, nsga2.crossover_probability,
                                       nsga2.swapping_probability, config.seed)
        return Nsga2Searcher(space, sampler, accuracy_metric=metric, cost_metric=COST_METRIC, cost=cost,
                             max_mflops=config.proposal_limit_mflops)
    factory = STRATEGIES[config.strategy]
    if config.budgets_mflops:
        proposer: Proposer = BudgetSweepProposer(space, config.budgets_mflops, lambda: factory(space, config), cost)
    else:
        proposer = factory(space, config)
    if config.predictor.enabled:
        proposer = PredictorScreenedProposer(
            proposer, RidgeAccuracyPredictor(space, l2=config.predictor.l2),
            candidates_per_proposal=config.predictor.candidates_per_proposal,
            min_observations=config.predictor.min_observations, constraint=constraint, predictions=predictions,
        )
    return ArchitectureSearcher(proposer, seed=config.seed, metric=metric, mode=mode, constraint=constraint)
