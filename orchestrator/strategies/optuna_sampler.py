"""Any Optuna sampler as a search strategy (``search.strategy: optuna``).

``search.optuna.sampler`` names a class of ``optuna.samplers`` (``TPESampler``, ``RandomSampler``,
``QMCSampler``, ``GPSampler``, ``NSGAIIISampler``, ...), built with ``search.optuna.sampler_options``
as keyword arguments and, when the class takes one and the options do not give it,
``seed=search.seed``. The sampler drives an ``OptunaSearcher`` (its rules: two objectives, the
FLOPs limit as a constraint, duplicates and unmeasured trials); a sampler that cannot handle two
objectives or categorical parameters is Optuna's to refuse, and its refusal is reported as a
``ConfigError`` naming the field before any work (``check_settings``).
"""

from __future__ import annotations

import inspect

import optuna

from orchestrator.config import ConfigError
from orchestrator.config.schema import SearchConfig
from orchestrator.strategies.optuna_search import OptunaSearcher, searcher_for
from orchestrator.strategies.registry import register_strategy
from orchestrator.strategies.strategy import SearchRequest, Strategy


def create_sampler(config: SearchConfig) -> optuna.samplers.BaseSampler:
    """The sampler ``search.optuna`` names, or ``ConfigError`` naming the field and the fix."""
    name, options = config.optuna.sampler, dict(config.optuna.sampler_options)
    sampler_class = getattr(optuna.samplers, name, None)
    if not (isinstance(sampler_class, type) and issubclass(sampler_class, optuna.samplers.BaseSampler)):
        known = sorted(attribute for attribute in dir(optuna.samplers) if attribute.endswith("Sampler")
                       and attribute != "BaseSampler")
        raise ConfigError(f"search.optuna.sampler: {name!r} is not a sampler of optuna.samplers; allowed values are "
                          f"{known}")
    if "seed" in inspect.signature(sampler_class).parameters:
        options.setdefault("seed", config.seed)
    try:
        return sampler_class(**options)
    except (TypeError, ValueError) as error:
        arguments = ", ".join(f"{key}={value!r}" for key, value in options.items())
        raise ConfigError(f"search.optuna.sampler_options: {name}({arguments}) is refused by Optuna ({error}); see "
                          f"optuna.samplers.{name}") from error


@register_strategy
class OptunaSamplerStrategy(Strategy):
    """A sampler of ``optuna.samplers`` over the study of ``optuna_search``; no predictor screens it."""

    name = "optuna"

    @classmethod
    def check_settings(cls, config: SearchConfig) -> None:
        create_sampler(config)

    def create_searcher(self, request: SearchRequest) -> OptunaSearcher:
        return searcher_for(request, create_sampler(request.config), request.config.optuna.initial_trials)
