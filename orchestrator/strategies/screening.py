"""Pre-screening with an accuracy predictor, composable with any proposer.

Once ``min_observations`` candidates are evaluated, each proposal draws ``candidates_per_proposal``
proposals from the wrapped proposer, ranks them by predicted score and passes on the best one
that meets the constraint: the predictor costs microseconds, a trial minutes. Before that the
wrapped proposer runs unchanged. The prediction of every spec that becomes a trial is kept in
``predictions`` (arch_id -> predicted score) before the trial runs, so the predictor can be judged
honestly against the measured score afterwards.
"""

from __future__ import annotations

import random

import numpy as np

from orchestrator.strategies.base import Constraint, Proposer
from orchestrator.strategies.predictor import RidgeAccuracyPredictor
from search_space import ArchSpec


class PredictorScreenedProposer(Proposer):
    def __init__(self, inner: Proposer, predictor: RidgeAccuracyPredictor, candidates_per_proposal: int,
                 min_observations: int, constraint: Constraint | None = None,
                 predictions: dict[str, float] | None = None):
        super().__init__(inner.space)
        if candidates_per_proposal < 1 or min_observations < 2:
            raise ValueError("need candidates_per_proposal >= 1 and min_observations >= 2")
        self.inner = inner
        self.predictor = predictor
        self.candidates_per_proposal = candidates_per_proposal
        self.min_observations = min_observations
        self.constraint = constraint
        self.predictions = predictions if predictions is not None else {}
        self.observed_specs: list[ArchSpec] = []
        self.observed_scores: list[float] = []
        self.tried: set[str] = set()
        self._pending: dict[str, float] = {}

    @property
    def screening(self) -> bool:
        return self.predictor.fitted and len(self.observed_specs) >= self.min_observations

    def propose(self, rng: random.Random) -> ArchSpec:
        if not self.screening:
            return self.inner.propose(rng)
        draws: dict[str, ArchSpec] = {}
        for _ in range(self.candidates_per_proposal):
            spec = self.inner.propose(rng)
            draws.setdefault(spec.arch_id, spec)
        fresh = [spec for arch_id, spec in draws.items() if arch_id not in self.tried] or list(draws.values())
        predicted = self.predictor.predict(fresh)
        ranked = [fresh[index] for index in np.argsort(-predicted, kind="stable")]
        self._pending = {spec.arch_id: float(value) for spec, value in zip(fresh, predicted)}
        for spec in ranked:
            if self.constraint is None or self.constraint(spec):
                return spec
        return ranked[0]  # none fits: the searcher's constraint rejects it and asks again

    def suggested(self, spec: ArchSpec) -> None:
        self.tried.add(spec.arch_id)
        if spec.arch_id in self._pending:
            self.predictions[spec.arch_id] = self._pending[spec.arch_id]
        self._pending = {}
        self.inner.suggested(spec)

    def observe(self, spec: ArchSpec, score: float) -> None:
        self.inner.observe(spec, score)
        self.observed_specs.append(spec)
        self.observed_scores.append(score)
        if len(self.observed_specs) >= 2:
            self.predictor.fit(self.observed_specs, self.observed_scores)
