"""Uniform random search: every gene drawn uniformly, independently of past results; under a FLOPs
budget, uniform over the architectures within it (``search_space.budget``)."""

from __future__ import annotations

import random

from orchestrator.config.schema import SearchConfig
from orchestrator.strategies.base import Proposer
from orchestrator.strategies.proposer_strategy import ProposerStrategy
from orchestrator.strategies.registry import register_strategy
from search_space import ArchSpec, SearchSpace


class RandomProposer(Proposer):
    def propose(self, rng: random.Random) -> ArchSpec:
        return self.space.sample(rng)


@register_strategy
class RandomStrategy(ProposerStrategy):
    name = "random"

    def create_proposer(self, space: SearchSpace, config: SearchConfig) -> RandomProposer:
        return RandomProposer(space)
