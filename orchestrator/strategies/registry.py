"""Named strategies behind one factory, ``create_searcher``.

Each strategy module registers its ``Strategy`` class with ``register_strategy`` when imported:
``random_search`` and ``evolution`` (proposers, see ``proposer_strategy``) and ``nsga2`` (Optuna's
NSGA-II sampler behind Ray Tune's ``OptunaSearch``). The rules of names and errors are those of
``search_space.registry``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from orchestrator.strategies.base import Constraint
from orchestrator.strategies.cost import FlopsCounter
from orchestrator.strategies.strategy import SearchRequest, Strategy
from search_space import SearchSpace
from search_space.registry import Registry

if TYPE_CHECKING:  # the config validates names against this registry: no import at run time
    from ray.tune.search import Searcher

    from orchestrator.config import SearchConfig

STRATEGIES: Registry[type[Strategy]] = Registry(
    "search strategy", "search.strategy",
    builtin_modules=("orchestrator.strategies.random_search", "orchestrator.strategies.evolution",
                     "orchestrator.strategies.nsga2"),
)


def register_strategy(strategy: type[Strategy]) -> type[Strategy]:
    """Register ``strategy`` under its ``name``, the value of ``search.strategy`` that selects it."""
    return STRATEGIES.register()(strategy)


def list_strategies() -> list[str]:
    return STRATEGIES.names()


def create_searcher(
    space: SearchSpace, config: SearchConfig, metric: str, mode: str, constraint: Constraint | None = None,
    cost: FlopsCounter | None = None, predictions: dict[str, float] | None = None,
) -> Searcher:
    """The configured strategy's searcher, scored by ``metric``; see ``SearchRequest`` for the rest.
    A budget below the space's smallest architecture is refused here too (``BudgetInfeasibleError``);
    the driver checks every rule of ``orchestrator.strategies.feasibility`` before this."""
    strategy = STRATEGIES[config.strategy]()
    cost = cost or FlopsCounter()
    return strategy.create_searcher(SearchRequest(space, config, metric, mode, cost, constraint, predictions))
