"""Search strategies: Tune searchers built from proposers over the search-space interface."""

from orchestrator.strategies.base import ArchitectureSearcher, Proposer
from orchestrator.strategies.registry import STRATEGIES, create_searcher, list_strategies

__all__ = ["STRATEGIES", "ArchitectureSearcher", "Proposer", "create_searcher", "list_strategies"]
