"""An Optuna study as a Ray Tune searcher, through the study's public ask/tell API.

The study has two objectives, the search metric (maximised) and the candidate's MFLOPs
(minimised), and one categorical parameter per gene, asked define-by-run; a trial's config stays
``{"arch": spec_json}``. Any Optuna sampler drives it (``nsga2``, ``optuna``: the strategies that
build one). Rules of ``OptunaSearcher``:

* FLOPs limit: each asked architecture's MFLOPs (``ProposalCost``, the analytic count) minus the
  limit is the trial's constraint ``flops`` (``Trial.set_constraint``: feasible when <= 0), which
  constrained samplers (NSGA-II, TPE) rank by. An architecture over the limit is never trained:
  it is told at once as complete with accuracy 0, so every feasible trial ranks above it, and in
  a budgeted space its repair (``BudgetedSpace.repair``: random genes one choice down until it
  fits) is enqueued (``Study.enqueue_trial``) as the next trial, so a child over the budget still
  yields a candidate.
* Initial population: under a budget, the first trials are uniform draws within it
  (``initial_population``), enqueued before the first ask: a sampler's own first samples come from
  the whole space, which a tight budget rejects almost always.
* De-duplication: an architecture already measured is told its recorded values again (same
  architecture, same result) without a Tune trial; one still running is told PRUNED.
* A Tune trial without both objectives (ASHA stopped it, or it failed) is told PRUNED or FAIL,
  never with a partial value: the sampler learns from fully trained candidates only.
* Generations: a genetic sampler (``BaseGASampler``) gives a trial its generation when it samples
  it; an enqueued trial has every parameter fixed and is never sampled, so it is given its
  generation by the sampler's own rule (``get_trial_generation``) when asked, or no population
  would count it.
* Storage: in memory by default, saved with the searcher into Tune's experiment. With
  ``search.optuna.storage`` (an RDB URL such as ``sqlite:///optuna.db``) the study lives there under
  its name, where ``optuna-dashboard <storage>`` shows it; the searcher then keeps only the name and
  the URL, without credentials (``redact_uri``: they come from the environment), and loads the
  study again when Tune restores it.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState
from ray.tune.search import Searcher

from orchestrator.common.credentials import redact_uri
from orchestrator.strategies.base import Cost, StatefulSearcher
from orchestrator.strategies.strategy import SearchRequest
from search_space import ArchSpec, BudgetedSpace, SearchSpace

logger = logging.getLogger(__name__)
CONSTRAINT_KEY = "flops"
COST_METRIC = "mflops"  # the FLOPs a trial reports with its final result: the second objective
DIRECTIONS = ("maximize", "minimize")
MAX_ASKS = 200


@dataclass(frozen=True)
class StudySettings:
    """The Optuna study of one search: its sampler, and where it is stored (None: in memory)."""

    sampler: optuna.samplers.BaseSampler
    name: str
    storage: str | None = None

    def create(self) -> optuna.Study:
        return optuna.create_study(directions=list(DIRECTIONS), sampler=self.sampler, storage=self.storage,
                                   study_name=self.name, load_if_exists=True)


def study_storage(request: SearchRequest, sampler: optuna.samplers.BaseSampler) -> StudySettings:
    """The study of ``request``'s search: ``search.optuna.study_name`` (default: the search's name) in
    ``search.optuna.storage`` (default: memory)."""
    settings = request.config.optuna
    return StudySettings(sampler, settings.study_name or request.name, settings.storage)


@dataclass(frozen=True)
class Objectives:
    """What a trial is told with: ``metric`` (maximised) and its MFLOPs, with ``cost`` giving a
    proposal's MFLOPs before it trains and ``limit_mflops`` the FLOPs limit (None: none)."""

    metric: str
    cost: Cost
    limit_mflops: float | None = None

    @property
    def names(self) -> tuple[str, str]:
        return self.metric, COST_METRIC


class OptunaSearcher(StatefulSearcher):
    """A Tune searcher over an Optuna study (see the module's rules). Tune checks every per-epoch
    result for the searcher's ``metric``; the cost arrives with the last epoch only, so Tune is
    shown the accuracy metric alone and the searcher reads both objectives from the final result."""

    def __init__(self, space: SearchSpace, study: StudySettings, objectives: Objectives,
                 initial_population: Sequence[ArchSpec] = (), seed: int = 0):
        super().__init__(metric=objectives.metric, mode="max")
        self.space = space
        self.objectives = objectives
        self.storage = redact_uri(study.storage) if study.storage else None
        self.study_name = study.name
        self.study = study.create()
        for spec in initial_population:
            self.study.enqueue_trial(self._params(spec))
        self.rng = random.Random(seed)  # repairs
        self.known: dict[str, list[float] | None] = {}  # arch_id -> objective values; None: not (yet) measured
        self.pending: dict[str, tuple[int, str]] = {}  # Tune trial id -> (study trial number, arch_id)
        self.exhausted = False
        self.max_asks = MAX_ASKS  # per suggestion, before the search ends early
        self.attempts = 0  # asks of the study, duplicates and proposals over the limit included
        self._observed = 0

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        """The objectives are fixed at construction; Tune's single metric only drives its scheduler."""
        return True

    @property
    def observed(self) -> int:
        """Trials told to the study with both objectives measured."""
        return self._observed

    def suggest(self, trial_id: str) -> dict | str | None:
        for _ in range(self.max_asks):
            self.attempts += 1
            trial = self.study.ask()
            self._assign_generation(trial)
            spec = self.space.from_genes([trial.suggest_categorical(name, list(choices))
                                          for name, choices in self.space.genes()])
            if self._told_at_once(trial, spec):
                continue
            self.known[spec.arch_id] = None
            self.pending[trial_id] = (trial.number, spec.arch_id)
            return {"arch": spec.to_json()}
        logger.warning("the Optuna study proposed no new architecture within search.max_mflops in %d asks: ending "
                       "the search early; relax search.max_mflops or lower search.num_candidates", self.max_asks)
        self.exhausted = True
        return Searcher.FINISHED

    def _told_at_once(self, trial: optuna.Trial, spec: ArchSpec) -> bool:
        """Tell a duplicate, or a proposal over the limit, without training it (module rules)."""
        limit = self.objectives.limit_mflops
        mflops = self.objectives.cost(spec)
        if limit is not None:
            trial.set_constraint(CONSTRAINT_KEY, mflops - limit)
        trial.set_user_attr("arch_id", spec.arch_id)
        if spec.arch_id in self.known:
            values = self.known[spec.arch_id]
            self.study.tell(trial, values, state=TrialState.COMPLETE if values else TrialState.PRUNED)
            return True
        if limit is not None and mflops > limit:
            values = [0.0, mflops]  # accuracy unmeasured: the constraint decides its rank anyway
            self.known[spec.arch_id] = values
            self.study.tell(trial, values)
            if isinstance(self.space, BudgetedSpace):  # the next ask proposes the repaired child
                self.study.enqueue_trial(self._params(self.space.repair(spec, self.rng)))
            return True
        return False

    def _params(self, spec: ArchSpec) -> dict[str, Any]:
        """The study's parameters of ``spec``: what ``enqueue_trial`` takes to propose it."""
        return {name: value for (name, _), value in zip(self.space.genes(), self.space.to_genes(spec))}

    def _assign_generation(self, trial: optuna.Trial) -> None:
        sampler = self.study.sampler
        if isinstance(sampler, optuna.samplers.BaseGASampler):
            sampler.get_trial_generation(self.study, self.study.get_trials(deepcopy=False)[trial.number])

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """A multi-objective study takes no intermediate values."""

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        number, arch_id = self.pending.pop(trial_id, (None, None))
        if number is None:
            return
        names = self.objectives.names
        if result and not error and all(name in result for name in names):
            values = [float(result[name]) for name in names]
            self.study.tell(number, values)
            self.known[arch_id] = values
            self._observed += 1
        else:
            self.study.tell(number, state=TrialState.FAIL if error else TrialState.PRUNED)

    # -- state: Tune pickles the searcher into its experiment, and saves its state at each snapshot -----
    def get_state(self) -> dict[str, Any]:
        return {"known": self.known, "pending": self.pending, "exhausted": self.exhausted, "attempts": self.attempts,
                "observed": self._observed, "rng": self.rng.getstate(),
                "study": self.study if self.storage is None else None}

    def set_state(self, state: dict[str, Any]) -> None:
        self.known, self.pending, self.exhausted = state["known"], state["pending"], state["exhausted"]
        self.attempts, self._observed = state["attempts"], state["observed"]
        self.rng.setstate(state["rng"])
        self.study = state["study"] or optuna.load_study(study_name=self.study_name, storage=self.storage)

    def __getstate__(self) -> dict[str, Any]:
        # A stored study is loaded again by name: its storage object holds a database engine.
        return {**self.__dict__, "study": self.study if self.storage is None else None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.study is None:
            self.study = optuna.load_study(study_name=self.study_name, storage=self.storage)


def initial_population(space: SearchSpace, size: int, seed: int, max_draws: int = 1000) -> list[ArchSpec]:
    """The first trials under a budget: up to ``size`` distinct uniform draws within it
    (``BudgetedSpace.sample``; fewer when the budget admits fewer); none without a budget, where the
    sampler's own first samples of the whole space serve."""
    if not isinstance(space, BudgetedSpace):
        return []
    rng, population = random.Random(seed), {}
    for _ in range(max_draws):
        spec = space.sample(rng)
        population.setdefault(spec.arch_id, spec)
        if len(population) == size:
            break
    return list(population.values())


def searcher_for(request: SearchRequest, sampler: optuna.samplers.BaseSampler,
                 initial_trials: int) -> OptunaSearcher:
    """The ``OptunaSearcher`` a strategy built on ``sampler`` runs for ``request``: its study, the search's
    objectives and FLOPs limit, and up to ``initial_trials`` draws within the budget first."""
    config, space = request.config, request.proposal_space
    return OptunaSearcher(space, study_storage(request, sampler),
                          Objectives(request.metric, request.cost, config.proposal_limit_mflops),
                          initial_population=initial_population(space, initial_trials, config.seed), seed=config.seed)

