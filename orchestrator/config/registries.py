"""Registries of the parts chosen by name that live above the configuration: the search strategies.

The schema checks ``search.strategy`` against ``STRATEGIES`` by name alone (built-ins are declared
with the module that registers them, ``search_space.registry``), so the configuration imports no
strategy; a strategy module registers its class here with ``register_strategy``
(``orchestrator.strategies.registry``) when it is imported, which ``STRATEGIES[name]`` does on
first use. The other registries the schema checks live with their kinds, below it
(``search_space.registry``, ``workers.datasets.registry``, ``workers.gallery.sources.registry``,
``workers.training.loss_registry``, ``evaluators.tasks``).
"""

from __future__ import annotations

from search_space.registry import Registry

# Of ``orchestrator.strategies.Strategy`` subclasses (not named here: that module is above this one).
STRATEGIES: Registry[type] = Registry(
    "search strategy", "search.strategy",
    builtins={"random": "orchestrator.strategies.random_search", "evolution": "orchestrator.strategies.evolution",
              "nsga2": "orchestrator.strategies.nsga2", "optuna": "orchestrator.strategies.optuna_sampler"},
)
