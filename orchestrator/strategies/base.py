"""Search strategies as Ray Tune searchers, composed from a small proposer interface.

A ``Proposer`` only knows the search space: it proposes a spec and observes scores. Under a FLOPs
budget its space is the budgeted one (``search_space.within_budget``), whose operators propose
within the budget. The ``ArchitectureSearcher`` wraps any proposer for Tune: it de-duplicates,
applies an optional constraint (the FLOPs gate, ``strategies.cost``'s analytic count), and feeds completed
trials back.
Proposer-based strategies (``ProposerStrategy``) differ only in their proposer, like Optuna's samplers.
"""

from __future__ import annotations

import logging
import pickle
import random
from abc import ABC, abstractmethod
from typing import Callable

from ray.tune.search import Searcher

from search_space import ArchSpec, SearchSpace

Constraint = Callable[[ArchSpec], bool]
Cost = Callable[[ArchSpec], float]  # MFLOPs of an architecture
logger = logging.getLogger(__name__)


class Proposer(ABC):
    def __init__(self, space: SearchSpace):
        self.space = space

    @abstractmethod
    def propose(self, rng: random.Random) -> ArchSpec:
        """A spec of ``space`` to evaluate next."""

    def suggested(self, spec: ArchSpec) -> None:
        """``spec`` became a trial (new and within the constraint); default: ignore."""

    def observe(self, spec: ArchSpec, score: float) -> None:
        """A completed evaluation (higher score is better); default: ignore."""


class StatefulSearcher(Searcher):
    """A Tune searcher whose ``get_state`` Tune saves at each experiment snapshot (``save``) and a
    resumed search loads again (``restore``), pickled to one file."""

    def get_state(self) -> dict:
        raise NotImplementedError

    def set_state(self, state: dict) -> None:
        raise NotImplementedError

    def save(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.get_state(), handle)

    def restore(self, checkpoint_path: str) -> None:
        with open(checkpoint_path, "rb") as handle:
            self.set_state(pickle.load(handle))


class ArchitectureSearcher(StatefulSearcher):
    """Tune searcher over a proposer; the trial config is ``{"arch": spec_json}``."""

    def __init__(
        self,
        proposer: Proposer,
        seed: int,
        metric: str | None = None,
        mode: str | None = None,
        constraint: Constraint | None = None,
        max_attempts: int = 200,
    ):
        super().__init__(metric=metric, mode=mode)
        if mode not in (None, "max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
        self.proposer = proposer
        self.constraint = constraint
        self.max_attempts = max_attempts
        self.rng = random.Random(seed)
        self.proposed: dict[str, ArchSpec] = {}
        self.seen: set[str] = set()
        self.exhausted = False
        self.attempts = 0  # proposals drawn, duplicates and refusals included
        self._observed = 0

    def set_search_properties(self, metric: str | None, mode: str | None, config: dict, **spec) -> bool:
        """Tune passes TuneConfig's metric and mode here; the search space is ours, not Tune's."""
        if metric:
            self._metric = metric
        if mode:
            if mode not in ("max", "min"):
                raise ValueError(f"mode must be 'max' or 'min', got {mode!r}")
            self._mode = mode
        return True

    @property
    def observed(self) -> int:
        """Completed trials whose score reached the proposer."""
        return self._observed

    def suggest(self, trial_id: str) -> dict | str | None:
        """A new spec, or ``Searcher.FINISHED`` when no new spec meets the constraint: the search
        then ends early with the candidates it has, rather than failing."""
        for _ in range(self.max_attempts):
            spec = self.proposer.propose(self.rng)
            self.attempts += 1
            if spec.arch_id in self.seen:
                continue
            self.seen.add(spec.arch_id)
            if self.constraint is not None and not self.constraint(spec):
                continue
            self.proposed[trial_id] = spec
            self.proposer.suggested(spec)
            return {"arch": spec.to_json()}
        logger.warning(
            "no new architecture satisfying the constraint in %d proposals: ending the search early; "
            "relax search.max_mflops (or search.max_latency_ms) or lower search.num_candidates", self.max_attempts,
        )
        self.exhausted = True
        return Searcher.FINISHED

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        """A trial that ASHA stopped early arrives here with its last (per-epoch) result: its
        score at that epoch reaches the proposer. ASHA stopped it for trailing its peers at the
        same epoch, so its lower-fidelity score ranks it low, where a full run would most likely have
        left it too; dropping it would throw away the one measurement of a candidate that
        de-duplication never proposes again."""
        if self.metric is None or self.mode is None:
            raise RuntimeError("the searcher needs a metric and a mode to learn from results")
        spec = self.proposed.pop(trial_id, None)
        if spec is None or error or not result or self.metric not in result:
            return
        score = float(result[self.metric])
        self.proposer.observe(spec, score if self.mode == "max" else -score)
        self._observed += 1

    def get_state(self) -> dict:
        return {"proposer": self.proposer, "rng": self.rng.getstate(), "proposed": self.proposed, "seen": self.seen,
                "observed": self._observed, "attempts": self.attempts}

    def set_state(self, state: dict) -> None:
        self.proposer = state["proposer"]
        self.rng.setstate(state["rng"])
        self.proposed, self.seen, self._observed = state["proposed"], state["seen"], state["observed"]
        self.attempts = state["attempts"]
