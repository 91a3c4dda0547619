"""Named strategies behind one factory, ``create_searcher``.

Each strategy module registers its ``Strategy`` class with ``register_strategy`` when imported,
into ``STRATEGIES`` (declared below the configuration, ``orchestrator.config.registries``, so the
schema checks a name without importing a strategy): ``random_search`` and ``evolution``
(proposers, see ``proposer_strategy``), ``nsga2`` and ``optuna`` (Optuna samplers through the
study's ask/tell API, ``optuna_search``). The rules of names and errors are those of
``search_space.registry``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.config.registries import STRATEGIES
from orchestrator.strategies.strategy import SearchRequest, Strategy

if TYPE_CHECKING:
    from ray.tune.search import Searcher


def register_strategy(strategy: type[Strategy]) -> type[Strategy]:
    """Register ``strategy`` under its ``name``, the value of ``search.strategy`` that selects it."""
    return STRATEGIES.register()(strategy)


def list_strategies() -> list[str]:
    return STRATEGIES.names()


def create_searcher(request: SearchRequest) -> Searcher:
    """The configured strategy's searcher for ``request``. A budget below the space's smallest
    architecture is refused here too (``BudgetInfeasibleError``); the driver checks every rule of
    ``orchestrator.strategies.feasibility`` before this."""
    strategy = STRATEGIES[request.config.strategy]()
    return strategy.create_searcher(request)
