"""Strategies built from a ``Proposer``: the proposer decides, the shared wrapping does the rest.

A proposer is created over the space under the search's FLOPs budget (``SearchRequest.proposal_space``),
so whatever it samples, mutates or crosses over stays within the budget. A budget sweep
(``search.budgets_mflops``) runs one proposer per budget, each over the space under its own
budget; the accuracy predictor (``search.predictor``) screens whichever proposer results, and
``ArchitectureSearcher`` turns it into a Tune searcher (de-duplication, constraint, results fed back).
"""

from __future__ import annotations

from abc import abstractmethod

from orchestrator.config.schema import SearchConfig
from orchestrator.strategies.base import ArchitectureSearcher, Proposer
from orchestrator.strategies.budget_sweep import BudgetSweepProposer
from orchestrator.strategies.predictor import RidgeAccuracyPredictor
from orchestrator.strategies.screening import PredictorScreenedProposer
from orchestrator.strategies.strategy import SearchRequest, Strategy
from search_space import SearchSpace


class ProposerStrategy(Strategy):
    supports_predictor = True

    @abstractmethod
    def create_proposer(self, space: SearchSpace, config: SearchConfig) -> Proposer:
        """A fresh proposer over ``space`` (under a FLOPs budget, its ``sample``, ``mutate`` and
        ``crossover`` stay within it). Called once per search, or once per budget of a budget sweep."""

    def create_searcher(self, request: SearchRequest) -> ArchitectureSearcher:
        space, config = request.space, request.config
        if config.budgets_mflops:
            proposer: Proposer = BudgetSweepProposer(space, config.budgets_mflops,
                                                     lambda budget_space: self.create_proposer(budget_space, config))
        else:
            proposer = self.create_proposer(request.proposal_space, config)
        if config.predictor.enabled:
            proposer = PredictorScreenedProposer(
                proposer, RidgeAccuracyPredictor(space, l2=config.predictor.l2),
                candidates_per_proposal=config.predictor.candidates_per_proposal,
                min_observations=config.predictor.min_observations, constraint=request.constraint,
                predictions=request.predictions,
            )
        return ArchitectureSearcher(proposer, seed=config.seed, metric=request.metric, mode=request.mode,
                                    constraint=request.constraint)
