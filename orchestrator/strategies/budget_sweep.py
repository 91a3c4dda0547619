"""Budget sweep (Once-for-All style): one search, the best candidate for each of several FLOPs budgets.

Each budget gets its own proposer (of the configured strategy) over the space under that budget
(``search_space.within_budget``), so its samples, mutations and crossovers stay within it by the
same mechanism a single-budget search uses. Trials go to the budgets in turn, so ``len(budgets)``
trials give every budget a candidate of its own. Evaluations are shared: a finished candidate is
observed by every budget it fits, so a cheap good model also seeds the evolution of every larger
budget. A proposer that builds specs without the space's operators may still propose above its
budget: such a proposal is repaired (``BudgetedSpace.repair``), never thrown away.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

from orchestrator.strategies.base import Proposer
from search_space import ArchSpec, BudgetedSpace, SearchSpace, within_budget


class BudgetSweepProposer(Proposer):
    """One proposer per budget, targeted in turn; every observation reaches all budgets it fits.

    ``make_proposer`` builds a proposer over the space it is given: the space under one budget.
    """

    def __init__(self, space: SearchSpace, budgets: Sequence[float],
                 make_proposer: Callable[[BudgetedSpace], Proposer]):
        super().__init__(space)
        self.budgets = sorted(budgets)
        self.spaces = [within_budget(space, budget, field="search.budgets_mflops") for budget in self.budgets]
        self.proposers = [make_proposer(budget_space) for budget_space in self.spaces]
        self.turn = 0

    @property
    def target(self) -> float:
        return self.budgets[self.turn % len(self.budgets)]

    def propose(self, rng: random.Random) -> ArchSpec:
        index = self.turn % len(self.budgets)
        return self.spaces[index].repair(self.proposers[index].propose(rng), rng)

    def suggested(self, spec: ArchSpec) -> None:
        self.proposers[self.turn % len(self.budgets)].suggested(spec)
        self.turn += 1

    def observe(self, spec: ArchSpec, score: float) -> None:
        for budget_space, proposer in zip(self.spaces, self.proposers):
            if budget_space.fits(spec):
                proposer.observe(spec, score)
