"""Regularized (aging) evolution, Real et al. 2019, with optional uniform crossover.

Until ``population_size`` results are in, proposals are uniform samples (under a FLOPs budget,
uniform over the architectures within it: ``search_space.budget``). After that each
proposal picks a parent by tournament (best of ``sample_size`` random members), optionally
crosses it with a second tournament winner, and mutates the child. Every completed candidate
joins the population and the oldest member leaves, so stale lucky scores age out. Under a
budget, crossover and mutation are the budgeted space's: no offspring breaks the budget.
"""

from __future__ import annotations

import random
from collections import deque

from orchestrator.config.schema import SearchConfig
from orchestrator.strategies.base import Proposer
from orchestrator.strategies.proposer_strategy import ProposerStrategy
from orchestrator.strategies.registry import register_strategy
from search_space import ArchSpec, SearchSpace


class RegularizedEvolutionProposer(Proposer):
    def __init__(
        self,
        space: SearchSpace,
        population_size: int,
        sample_size: int,
        mutation_probability: float,
        crossover_probability: float,
    ):
        super().__init__(space)
        if not 1 <= sample_size <= population_size:
            raise ValueError("need 1 <= sample_size <= population_size")
        self.population_size = population_size
        self.sample_size = sample_size
        self.mutation_probability = mutation_probability
        self.crossover_probability = crossover_probability
        self.population: deque[tuple[ArchSpec, float]] = deque(maxlen=population_size)
        self.observed = 0

    def propose(self, rng: random.Random) -> ArchSpec:
        if self.observed < self.population_size:
            return self.space.sample(rng)
        parent = self._tournament(rng)
        if rng.random() < self.crossover_probability:
            parent = self.space.crossover(parent, self._tournament(rng), rng)
        return self.space.mutate(parent, rng, self.mutation_probability)

    def observe(self, spec: ArchSpec, score: float) -> None:
        self.population.append((spec, score))
        self.observed += 1

    def _tournament(self, rng: random.Random) -> ArchSpec:
        contestants = rng.sample(list(self.population), self.sample_size)
        return max(contestants, key=lambda member: member[1])[0]


@register_strategy
class EvolutionStrategy(ProposerStrategy):
    name = "evolution"

    def create_proposer(self, space: SearchSpace, config: SearchConfig) -> RegularizedEvolutionProposer:
        evolution = config.evolution
        return RegularizedEvolutionProposer(
            space,
            population_size=evolution.population_size,
            sample_size=evolution.sample_size,
            mutation_probability=evolution.mutation_probability,
            crossover_probability=evolution.crossover_probability,
        )
