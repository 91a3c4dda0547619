"""NSGA-II over the search space: Optuna's ``NSGAIISampler`` behind an ``OptunaSearcher``.

Two objectives, the search metric (max) and MFLOPs (min), with the FLOPs limit as the study's
constraint (the rules are ``optuna_search``'s). Around the sampler cmpnas adds the initial
population: under a budget, generation 0 is ``population_size`` distinct draws from the uniform
distribution over the architectures within it (``optuna_search.initial_population``), enqueued
before the first ask, instead of Optuna's uniform samples of the whole space, which a tight budget
rejects almost always. Proposals come from Optuna's sampler, so no accuracy predictor screens them; a
budget sweep only bounds them by its largest budget (``search.proposal_limit_mflops``).
"""

from __future__ import annotations

import optuna

from orchestrator.strategies.optuna_search import OptunaSearcher, searcher_for
from orchestrator.strategies.registry import register_strategy
from orchestrator.strategies.strategy import SearchRequest, Strategy


@register_strategy
class Nsga2Strategy(Strategy):
    name = "nsga2"

    def create_searcher(self, request: SearchRequest) -> OptunaSearcher:
        config = request.config
        nsga2 = config.nsga2
        sampler = optuna.samplers.NSGAIISampler(
            population_size=nsga2.population_size, mutation_prob=nsga2.mutation_probability,
            crossover_prob=nsga2.crossover_probability, swapping_prob=nsga2.swapping_probability, seed=config.seed)
        return searcher_for(request, sampler, initial_trials=nsga2.population_size)
