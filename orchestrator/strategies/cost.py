"""The FLOPs of a proposal, before anything is built: the analytic count (``search_space.flops``).

It equals fvcore's count on the built model (checked on every registered space by
``tests/search_space/test_flops.py``) and takes microseconds, so strategies ask for it as often as
they like: the budget gate on every proposal, NSGA-II's constraint, budget targeting. The figure a
trial records is still fvcore's, measured on the trained model (``workers.trial``).
"""

from __future__ import annotations

from search_space import ArchSpec, SearchSpace, estimate_mflops


class ProposalCost:
    """``cost(spec)`` -> MFLOPs of ``spec`` (one image; one multiply-add = one flop), counted analytically."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, spec: ArchSpec) -> float:
        return estimate_mflops(self.space, spec)


class WithinBudget:
    """A picklable constraint: ``spec`` costs at most ``max_mflops``."""

    def __init__(self, cost: ProposalCost, max_mflops: float):
        self.cost = cost
        self.max_mflops = max_mflops

    def __call__(self, spec: ArchSpec) -> bool:
        return self.cost(spec) <= self.max_mflops
