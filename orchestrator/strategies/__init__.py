"""Search strategies: Tune searchers built from proposers over the search-space interface."""

from orchestrator.strategies.base import ArchitectureSearcher, Proposer, SearchExhausted
from orchestrator.strategies.registry import STRATEGIES, create_searcher

__all__ = ["STRATEGIES", "ArchitectureSearcher", "Proposer", "SearchExhausted", "create_searcher"]
