"""Named strategies behind one factory, ``create_searcher``."""

from __future__ import annotations

from typing import Callable

from orchestrator.config import SearchConfig
from orchestrator.strategies.base import ArchitectureSearcher, Constraint, Proposer
from orchestrator.strategies.evolution import RegularizedEvolutionProposer
from orchestrator.strategies.random_search import RandomProposer
from search_space import SearchSpace

ProposerFactory = Callable[[SearchSpace, SearchConfig], Proposer]

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


def create_searcher(
    space: SearchSpace, config: SearchConfig, metric: str, mode: str, constraint: Constraint | None = None
) -> ArchitectureSearcher:
    """The configured strategy, scored by ``metric`` (Tune only forwards TuneConfig's metric to
    searchers when it owns the search space, which it does not here)."""
    if config.strategy not in STRATEGIES:
        raise ValueError(f"unknown search.strategy {config.strategy!r}; allowed values are {sorted(STRATEGIES)}")
    proposer = STRATEGIES[config.strategy](space, config)
    return ArchitectureSearcher(proposer, seed=config.seed, metric=metric, mode=mode, constraint=constraint)
