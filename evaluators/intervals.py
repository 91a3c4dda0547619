"""Confidence intervals of a retrieval figure over queries and seeds, and of a difference of two methods.

The rules (those of the evidence benchmark, ``docs/protocol.md``):

* a *run* is one seed of one method; its per-query values (``QueryOutcomes.recall_hits(1)``,
  ``average_precision``; scale them as wanted) are over the same queries, in the same order, for every
  run being compared: that is what lets differences be paired;
* the estimate is the mean over runs of each run's mean over queries (every run counts equally);
* the interval is a hierarchical percentile bootstrap: each replicate draws runs with replacement,
  then queries with replacement, and recomputes the estimate; the interval holds the central
  ``level`` of the replicates. Both sources of variation are in it: which seeds, and which queries;
* a difference of two methods draws the runs of each method on its own (their seeds are
  independent) and **one** query draw for both within a replicate (the same test images): a paired
  interval, narrower than two separate ones where both methods find the same images easy or hard.

With one run, only queries are resampled; with a handful of seeds the seed part of the interval is
itself rough (three values), which is why the interval is reported beside the per-seed values.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float
    level: float

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def as_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "level": self.level}


@dataclass(frozen=True)
class BootstrapSettings:
    replicates: int = 2000
    level: float = 0.95
    seed: int = 0

    def __post_init__(self) -> None:
        if self.replicates < 100:
            raise ValueError(f"replicates must be at least 100 for a percentile interval, got {self.replicates}")
        if not 0 < self.level < 1:
            raise ValueError(f"level must be in (0, 1), got {self.level}")


def _runs(per_run: list[np.ndarray], name: str) -> np.ndarray:
    if not per_run:
        raise ValueError(f"{name}: at least one run is needed")
    lengths = {len(values) for values in per_run}
    if len(lengths) != 1 or 0 in lengths:
        raise ValueError(f"{name}: every run must score the same non-empty queries, got lengths {sorted(lengths)}")
    return np.stack([np.asarray(values, dtype=np.float64) for values in per_run])


def _replicate_means(runs: np.ndarray, run_draws: np.ndarray, query_draws: np.ndarray) -> np.ndarray:
    """The estimate under each replicate's draw of runs (rows of ``run_draws``) and queries."""
    # Mean over the drawn queries of each run first (runs x replicates), then over the drawn runs.
    per_run = np.stack([runs[:, draw].mean(axis=1) for draw in query_draws], axis=1)
    return np.take_along_axis(per_run.T, run_draws, axis=1).mean(axis=1)


def _percentiles(estimate: float, replicates: np.ndarray, level: float) -> Interval:
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(replicates, [tail, 100 - tail])
    return Interval(float(estimate), float(low), float(high), level)


def mean_interval(per_run: list[np.ndarray], settings: BootstrapSettings = BootstrapSettings()) -> Interval:
    """The estimate and its interval for one method's runs (module rules)."""
    runs = _runs(per_run, "mean_interval")
    rng = np.random.default_rng(settings.seed)
    query_draws = rng.integers(0, runs.shape[1], (settings.replicates, runs.shape[1]), dtype=np.int32)
    run_draws = rng.integers(0, len(runs), (settings.replicates, len(runs)))
    return _percentiles(runs.mean(), _replicate_means(runs, run_draws, query_draws), settings.level)


def paired_difference_interval(first: list[np.ndarray], second: list[np.ndarray],
                               settings: BootstrapSettings = BootstrapSettings()) -> Interval:
    """``first`` minus ``second`` (methods' runs over the same queries), with one query draw for both."""
    first_runs, second_runs = _runs(first, "first"), _runs(second, "second")
    if first_runs.shape[1] != second_runs.shape[1]:
        raise ValueError(f"both methods must score the same queries, got {first_runs.shape[1]} and "
                         f"{second_runs.shape[1]}")
    rng = np.random.default_rng(settings.seed)
    query_draws = rng.integers(0, first_runs.shape[1], (settings.replicates, first_runs.shape[1]), dtype=np.int32)
    first_draws = rng.integers(0, len(first_runs), (settings.replicates, len(first_runs)))
    second_draws = rng.integers(0, len(second_runs), (settings.replicates, len(second_runs)))
    differences = (_replicate_means(first_runs, first_draws, query_draws)
                   - _replicate_means(second_runs, second_draws, query_draws))
    return _percentiles(first_runs.mean() - second_runs.mean(), differences, settings.level)
