"""NSGA-II over the search space, through Ray Tune's Optuna integration and Optuna's own sampler.

Two objectives, cross-model mAP (max) and fvcore MFLOPs (min); the Optuna study sees one
categorical parameter per gene, asked define-by-run, and the trial config stays ``{"arch": ...}``
(plus the gene values Ray's OptunaSearch adds). cmpnas adds three things around the sampler:

* FLOPs constraint, through Optuna's trial constraints (``Trial.set_constraint``, key ``flops``:
  MFLOPs - limit, feasible when <= 0). The FLOPs of a proposal are known before training, so an
  over-budget proposal is never trained: it is told to the study at once as complete with
  accuracy 0, so NSGA-II's constrained domination ranks every feasible trial above it and
  infeasible ones by their violation; then it is repaired (``BudgetedSpace.repair``: random genes
  one choice down until it fits) and the repaired child is enqueued as the study's next trial,
  so a crossover or mutation over the budget yields a candidate instead of a lost proposal.
* Initial population within the budget: under a budget, generation 0 is ``population_size``
  distinct draws from the uniform distribution over the architectures within it
  (``BudgetedSpace.sample``), enqueued before the first ask, instead of Optuna's uniform samples
  of the whole space, which a tight budget rejects almost always.
* De-duplication: a proposal already evaluated is told the recorded objective values again (same
  architecture, same result) without a trial; one still running is told PRUNED.
* Trials without both objectives (ASHA stopped them, or they failed) are told PRUNED or FAIL,
  never with a partial value: NSGA-II then selects parents from fully trained candidates only.
"""

from __future__ import annotations

import logging
import random
from typing import Sequence

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from orchestrator.strategies.cost import FlopsCounter
from orchestrator.strategies.registry import register_strategy
from orchestrator.strategies.strategy import SearchRequest, Strategy
from search_space import ArchSpec, BudgetedSpace, SearchSpace

logger = logging.getLogger(__name__)
CONSTRAINT_KEY = "flops"
COST_METRIC = "mflops"  # the FLOPs a trial reports with its final result: NSGA-II's second objective


class GeneSpace:
    """Define-by-run search space: one categorical per gene; returns the architecture as config."""

    def __init__(self, space: SearchSpace):
        self.space = space

    def __call__(self, trial) -> dict[str, str]:
        values = [trial.suggest_categorical(name, list(choices)) for name, choices in self.space.genes()]
        return {"arch": self.space.from_genes(values).to_json()}

    def params(self, spec: ArchSpec) -> dict[str, int]:
        """The study's parameters of ``spec``: what ``enqueue_trial`` takes to propose it."""
        return {name: value for (name, _), value in zip(self.space.genes(), self.space.to_genes(spec))}


def create_nsga2_sampler(population_size: int, mutation_probability: float | None, crossover_probability: float,
                         swapping_probability: float, seed: int) -> optuna.samplers.NSGAIISampler:
    return optuna.samplers.NSGAIISampler(
        population_size=population_size, mutation_prob=mutation_probability, crossover_prob=crossover_probability,
        swapping_prob=swapping_probability, seed=seed,
    )


class Nsga2Searcher(OptunaSearch):
    """OptunaSearch on a two-objective study: ``accuracy_metric`` (max) and ``cost_metric`` (min).

    Tune checks every per-epoch result for the searcher's ``metric``, but the cost arrives with
    the last epoch only; so Tune is shown the accuracy metric alone, and the searcher reads both
    objectives from the final result itself (``objectives``).
    """

    def __init__(self, space: SearchSpace, sampler: optuna.samplers.BaseSampler, accuracy_metric: str,
                 cost_metric: str, cost: FlopsCounter, max_mflops: float | None = None, max_attempts: int = 200,
                 initial_population: Sequence[ArchSpec] = (), seed: int = 0):
        genes = GeneSpace(space)
        super().__init__(space=genes, metric=[accuracy_metric, cost_metric], mode=["max", "min"], sampler=sampler,
                         points_to_evaluate=[genes.params(spec) for spec in initial_population] or None)
        self.objectives = [accuracy_metric, cost_metric]
        self._metric, self._mode = accuracy_metric, "max"
        self.arch_space = space
        self.genes = genes
        self.cost = cost
        self.max_mflops = max_mflops
        self.max_attempts = max_attempts
        self.rng = random.Random(seed)  # repairs; saved with the searcher's state
        self.known: dict[str, list[float] | None] = {}  # arch_id -> objective values; None: not (yet) measured
        self.arch_of_trial: dict[str, str] = {}
        self.exhausted = False
        self.attempts = 0  # asks of the study, duplicates and over-budget proposals included
        self._observed = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        """Objectives are fixed at construction; Tune's single metric only drives its scheduler."""
        return True

    @property
    def observed(self) -> int:
        """Trials told to Optuna with both objectives measured."""
        return self._observed

    def suggest(self, trial_id: str) -> dict | str | None:
        for _ in range(self.max_attempts):
            config = super().suggest(trial_id)
            self.attempts += 1
            spec = ArchSpec.from_json(config["arch"])
            ot_trial = self._ot_trials[trial_id]
            self._assign_generation(ot_trial)
            mflops = self.cost(spec)
            violation = mflops - self.max_mflops if self.max_mflops is not None else 0.0
            if self.max_mflops is not None:
                ot_trial.set_constraint(CONSTRAINT_KEY, violation)
            ot_trial.set_user_attr("arch_id", spec.arch_id)
            if spec.arch_id in self.known:
                values = self.known[spec.arch_id]
                self._tell_without_trial(trial_id, values, TrialState.COMPLETE if values else TrialState.PRUNED)
            elif violation > 0:
                values = [0.0, mflops]  # accuracy unmeasured: the constraint decides its rank anyway
                self.known[spec.arch_id] = values
                self._tell_without_trial(trial_id, values, TrialState.COMPLETE)
                if isinstance(self.arch_space, BudgetedSpace):  # the next ask proposes the repaired child
                    self._ot_study.enqueue_trial(self.genes.params(self.arch_space.repair(spec, self.rng)))
            else:
                self.known[spec.arch_id] = None
                self.arch_of_trial[trial_id] = spec.arch_id
                return config
        logger.warning("NSGA-II proposed no new architecture within search.max_mflops in %d asks: ending the "
                       "search early; relax search.max_mflops or lower search.num_candidates", self.max_attempts)
        self.exhausted = True
        return Searcher.FINISHED

    def _assign_generation(self, ot_trial: optuna.Trial) -> None:
        """NSGA-II gives a trial its generation when it samples the trial's parameters; an enqueued
        trial (the initial population, a repaired child) has them all fixed and is never sampled, so
        it gets its generation here, by the sampler's own rule, or no population would count it."""
        sampler = self._ot_study.sampler
        if isinstance(sampler, optuna.samplers.NSGAIISampler):
            sampler.get_trial_generation(self._ot_study, self._ot_study.get_trials(deepcopy=False)[ot_trial.number])

    def _tell_without_trial(self, trial_id: str, values: list[float] | None, state: TrialState) -> None:
        ot_trial = self._ot_trials.pop(trial_id)
        self._ot_study.tell(ot_trial, values if state == TrialState.COMPLETE else None, state=state)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """Optuna takes no intermediate values in a multi-objective study."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        arch_id = self.arch_of_trial.pop(trial_id, None)
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return
        measured = bool(result) and not error and all(metric in result for metric in self.objectives)
        if measured:
            values = [float(result[metric]) for metric in self.objectives]
            self._ot_study.tell(self._ot_trials[trial_id], values, state=TrialState.COMPLETE)
            if arch_id is not None:
                self.known[arch_id] = values
            self._observed += 1
        else:
            self._ot_study.tell(self._ot_trials[trial_id], None,
                                state=TrialState.FAIL if error else TrialState.PRUNED)
        self._completed_trials.add(trial_id)


@register_strategy
class Nsga2Strategy(Strategy):
    """Proposes through Optuna's sampler, so no accuracy predictor screens it; a budget sweep only
    bounds its proposals by the largest budget (``search.proposal_limit_mflops``)."""

    name = "nsga2"

    def create_searcher(self, request: SearchRequest) -> Nsga2Searcher:
        config = request.config
        nsga2 = config.nsga2
        sampler = create_nsga2_sampler(nsga2.population_size, nsga2.mutation_probability, nsga2.crossover_probability,
                                       nsga2.swapping_probability, config.seed)
        space = request.proposal_space
        return Nsga2Searcher(space, sampler, accuracy_metric=request.metric, cost_metric=COST_METRIC,
                             cost=request.cost, max_mflops=config.proposal_limit_mflops,
                             initial_population=initial_population(space, nsga2.population_size, config.seed),
                             seed=config.seed)


def initial_population(space: SearchSpace, size: int, seed: int, max_draws: int = 1000) -> list[ArchSpec]:
    """Generation 0 under a budget: up to ``size`` distinct uniform draws within it (fewer when the
    budget admits fewer); none without a budget, where Optuna's own uniform samples serve."""
    if not isinstance(space, BudgetedSpace):
        return []
    rng, population = random.Random(seed), {}
    for _ in range(max_draws):
        spec = space.sample(rng)
        population.setdefault(spec.arch_id, spec)
        if len(population) == size:
            break
    return list(population.values())
