"""Budget sweep (Once-for-All style): one search, the best candidate for each of several FLOPs budgets.

Each budget gets its own proposer (of the configured strategy), constrained to that budget.
Trials go to the budgets in turn, so ``len(budgets)`` trials give every budget a candidate of its
own. Evaluations are shared: a finished candidate is observed by every budget it fits, so a cheap
good model also seeds the evolution of every larger budget. A proposal above its target budget is
shrunk towards the space's smallest architecture (``shrink_to_budget``) instead of being thrown
away: rejection sampling almost never hits a tight budget in a space of 3^21 architectures.
"""

from __future__ import annotations

import random
from typing import Callable, Sequence

from orchestrator.strategies.base import Proposer
from search_space import ArchSpec, SearchSpace

Cost = Callable[[ArchSpec], float]


class BudgetInfeasibleError(ValueError):
    """A budget below the cost of the smallest architecture of the space."""


def check_budgets(space: SearchSpace, budgets: Sequence[float], cost: Cost) -> None:
    floor = cost(space.smallest())
    too_small = [budget for budget in budgets if budget < floor]
    if too_small:
        raise BudgetInfeasibleError(
            f"search.budgets_mflops {too_small} are below the smallest architecture of the space "
            f"'{space.name}' ({floor:.3f} MFLOPs): raise them to at least {floor:.3f}"
        )


def shrink_to_budget(space: SearchSpace, spec: ArchSpec, budget: float, cost: Cost, rng: random.Random) -> ArchSpec:
    """``spec`` if it fits, else the mix of ``spec`` and the smallest architecture that keeps the
    most genes of ``spec`` (in a random order) and fits, found by bisection: cost grows with every
    gene, so about log2(genes) measurements suffice."""
    if cost(spec) <= budget:
        return spec
    values, floor = space.to_genes(spec), space.to_genes(space.smallest())
    order = list(range(len(values)))
    rng.shuffle(order)

    def keep(count: int) -> ArchSpec:
        kept = set(order[:count])
        return space.from_genes([value if index in kept else low
                                 for index, (value, low) in enumerate(zip(values, floor))])

    low, high = 0, len(values)  # keep(low) fits (the smallest fits, see check_budgets); keep(high) does not
    while high - low > 1:
        middle = (low + high) // 2
        if cost(keep(middle)) <= budget:
            low = middle
        else:
            high = middle
    return keep(low)


class BudgetSweepProposer(Proposer):
    """One proposer per budget, targeted in turn; every observation reaches all budgets it fits."""

    def __init__(self, space: SearchSpace, budgets: Sequence[float], make_proposer: Callable[[], Proposer],
                 cost: Cost):
        super().__init__(space)
        self.budgets = sorted(budgets)
        self.cost = cost
        self.proposers = [make_proposer() for _ in self.budgets]
        self.turn = 0

    @property
    def target(self) -> float:
        return self.budgets[self.turn % len(self.budgets)]

    def propose(self, rng: random.Random) -> ArchSpec:
        index = self.turn % len(self.budgets)
        spec = self.proposers[index].propose(rng)
        return shrink_to_budget(self.space, spec, self.budgets[index], self.cost, rng)

    def suggested(self, spec: ArchSpec) -> None:
        self.proposers[self.turn % len(self.budgets)].suggested(spec)
        self.turn += 1

    def observe(self, spec: ArchSpec, score: float) -> None:
        mflops = self.cost(spec)
        for budget, proposer in zip(self.budgets, self.proposers):
            if mflops <= budget:
                proposer.observe(spec, score)
