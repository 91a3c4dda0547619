"""Search strategies, registered by name (``STRATEGIES``): each builds the Tune searcher of one search."""

from orchestrator.strategies.base import ArchitectureSearcher, Proposer
from orchestrator.strategies.proposer_strategy import ProposerStrategy
from orchestrator.strategies.registry import STRATEGIES, create_searcher, list_strategies, register_strategy
from orchestrator.strategies.strategy import SearchRequest, Strategy

__all__ = [
    "STRATEGIES",
    "ArchitectureSearcher",
    "Proposer",
    "ProposerStrategy",
    "SearchRequest",
    "Strategy",
    "create_searcher",
    "list_strategies",
    "register_strategy",
]
