"""Accuracy predictor: ridge regression from an architecture's one-hot genes to its measured score.

The encoding has one indicator per (gene, choice), so the model is additive over design choices:
"kernel 5 in stage 2 adds x points". With tens of observations and ~60 features, a closed-form
ridge fit (numpy, microseconds) is as much model as the data supports.
"""

from __future__ import annotations

import numpy as np

from search_space import ArchSpec, SearchSpace


def one_hot_genes(space: SearchSpace, spec: ArchSpec) -> np.ndarray:
    """Indicators of every gene's chosen value, in ``space.genes()`` order."""
    features = []
    for (_, choices), value in zip(space.genes(), space.to_genes(spec)):
        features.extend(1.0 if value == choice else 0.0 for choice in choices)
    return np.asarray(features)


class RidgeAccuracyPredictor:
    """``fit`` on (spec, score) pairs, then ``predict`` scores of unseen specs. The intercept is
    the mean score and is not penalised, so an unfitted direction predicts the average."""

    def __init__(self, space: SearchSpace, l2: float = 1.0):
        if l2 <= 0:
            raise ValueError("l2 must be > 0")
        self.space = space
        self.l2 = l2
        self.weights: np.ndarray | None = None
        self.intercept = 0.0

    @property
    def fitted(self) -> bool:
        return self.weights is not None

    def fit(self, specs: list[ArchSpec], scores: list[float]) -> RidgeAccuracyPredictor:
        if len(specs) != len(scores) or not specs:
            raise ValueError("fit needs as many scores as specs, at least one")
        features = np.stack([one_hot_genes(self.space, spec) for spec in specs])
        targets = np.asarray(scores, dtype=float)
        mean_features, self.intercept = features.mean(axis=0), float(targets.mean())
        centred = features - mean_features
        gram = centred.T @ centred + self.l2 * np.eye(centred.shape[1])
        self.weights = np.linalg.solve(gram, centred.T @ (targets - self.intercept))
        self.intercept -= float(mean_features @ self.weights)
        return self

    def predict(self, specs: list[ArchSpec]) -> np.ndarray:
        if self.weights is None:
            raise RuntimeError("predict before fit: the predictor has seen no evaluated candidates")
        return np.stack([one_hot_genes(self.space, spec) for spec in specs]) @ self.weights + self.intercept
