"""The interface of a search strategy, in the manner of Optuna's samplers.

A strategy is a class registered by name (``register_strategy``), chosen by ``search.strategy``.
When each method is called:

- ``check_settings`` (a classmethod): before a search or ``cmpnas space info`` does any work, with
  the search section alone; it refuses settings the strategy cannot use (``ConfigError`` naming
  the field), so a mistake costs seconds, not a gallery training;
- ``create_searcher``: once per search, after the FLOPs budgets were checked against the space
  (``orchestrator.strategies.feasibility``), through the module function ``create_searcher``
  (``orchestrator.strategies.registry``), which instantiates the strategy without arguments. The
  Ray Tune searcher it returns proposes every trial of that search: Tune calls its ``suggest``
  for each trial and ``on_trial_complete`` with each trial's final result.

Strategies that propose one architecture at a time subclass ``ProposerStrategy`` and implement only
``create_proposer``; strategies that run an Optuna sampler build an ``OptunaSearcher``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from orchestrator.strategies.base import Constraint, Cost
from search_space import SearchSpace, within_budget

if TYPE_CHECKING:
    from ray.tune.search import Searcher

    from orchestrator.config.schema import SearchConfig


@dataclass(frozen=True)
class SearchRequest:
    """What one search asks of its strategy.

    ``metric`` and ``mode`` score trials (Tune only forwards TuneConfig's metric to searchers when
    it owns the search space, which it does not here); ``cost`` gives a proposal's MFLOPs
    (``ProposalCost``: the analytic count), shared with ``constraint`` (the gate every proposal
    passes); ``predictions`` receives the accuracy predictor's forecast of every trial before it
    runs, when the strategy screens with one; ``name`` names the search where a strategy keeps
    records of its own (an Optuna study). A strategy proposes from ``proposal_space``, so its
    proposals meet the FLOPs budget by construction.
    """

    space: SearchSpace
    config: SearchConfig
    metric: str
    cost: Cost
    mode: str = "max"
    constraint: Constraint | None = None
    predictions: dict[str, float] | None = None
    name: str = "cmpnas"

    @property
    def proposal_space(self) -> SearchSpace:
        """``space`` under the search's proposal limit (``search.max_mflops``, else the largest of
        ``search.budgets_mflops``), whose operators stay within it; ``space`` itself without one."""
        limit = self.config.proposal_limit_mflops
        if limit is None:
            return self.space
        field = "search.max_mflops" if self.config.max_mflops is not None else "search.budgets_mflops"
        return within_budget(self.space, limit, field=field)


class Strategy(ABC):
    """One search strategy; instantiated without arguments, once per search."""

    name: ClassVar[str]
    supports_predictor: ClassVar[bool] = False
    """Whether ``search.predictor`` may screen this strategy's proposals (refused otherwise, by
    ``orchestrator.strategies.feasibility.check_strategy_settings``)."""

    @classmethod
    def check_settings(cls, config: SearchConfig) -> None:
        """Refuse settings of ``config`` this strategy cannot use, with a ``ConfigError`` naming the
        field; called before any work (see the module docstring). Default: nothing to check."""

    @abstractmethod
    def create_searcher(self, request: SearchRequest) -> Searcher:
        """The Tune searcher of one search (see the module docstring for when)."""
