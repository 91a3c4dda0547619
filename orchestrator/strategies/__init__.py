"""Search strategies, registered by name (``STRATEGIES``): each builds the Tune searcher of one search."""

from orchestrator.config.registries import STRATEGIES
from orchestrator.strategies.base import ArchitectureSearcher, Proposer
from orchestrator.strategies.cost import ProposalCost, WithinBudget
from orchestrator.strategies.proposer_strategy import ProposerStrategy
from orchestrator.strategies.registry import create_searcher, list_strategies, register_strategy
from orchestrator.strategies.strategy import SearchRequest, Strategy

__all__ = [
    "STRATEGIES",
    "ArchitectureSearcher",
    "ProposalCost",
    "Proposer",
    "ProposerStrategy",
    "SearchRequest",
    "Strategy",
    "WithinBudget",
    "create_searcher",
    "list_strategies",
    "register_strategy",
]
