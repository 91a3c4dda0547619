"""The interface of a search strategy, in the manner of Optuna's samplers.

A strategy is a class registered by name (``register_strategy``), chosen by ``search.strategy``.
The driver calls ``create_searcher`` (the module function in ``orchestrator.strategies.registry``)
once per search; it instantiates the configured strategy and asks it for the Ray Tune searcher
that proposes every trial of that search. Strategies that propose one architecture at a time
subclass ``ProposerStrategy`` and implement only ``create_proposer``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from orchestrator.strategies.base import Constraint, Cost
from search_space import SearchSpace, within_budget

if TYPE_CHECKING:  # the config validates names against the strategy registry: no import at run time
    from ray.tune.search import Searcher

    from orchestrator.config import SearchConfig


@dataclass(frozen=True)
class SearchRequest:
    """What one search asks of its strategy.

    ``metric`` and ``mode`` score trials (Tune only forwards TuneConfig's metric to searchers when
    it owns the search space, which it does not here); ``cost`` measures FLOPs, shared with
    ``constraint`` so each architecture is counted once; ``predictions`` receives the accuracy
    predictor's forecast of every trial before it runs, when the strategy screens with one.
    A strategy proposes from ``proposal_space``, so its proposals meet the FLOPs budget by
    construction; ``constraint`` is the gate every proposal still passes.
    """

    space: SearchSpace
    config: SearchConfig
    metric: str
    mode: str
    cost: Cost
    constraint: Constraint | None = None
    predictions: dict[str, float] | None = None

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
    """Whether ``search.predictor`` may screen this strategy's proposals (the config refuses it otherwise)."""

    @abstractmethod
    def create_searcher(self, request: SearchRequest) -> Searcher:
        """The Tune searcher of one search. Called once per search, after the FLOPs budgets
        (``search.max_mflops``, ``search.budgets_mflops``) were checked against the space
        (``orchestrator.strategies.feasibility``); the searcher then gets
        ``suggest`` for every trial and ``on_trial_complete`` with each trial's final result."""
