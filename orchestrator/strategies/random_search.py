"""Uniform random search: every gene drawn uniformly, independently of past results."""

from __future__ import annotations

import random

from orchestrator.strategies.base import Proposer
from search_space import ArchSpec


class RandomProposer(Proposer):
    def propose(self, rng: random.Random) -> ArchSpec:
        return self.space.sample(rng)
