"""Spearman's rank correlation between two scores of the same candidates, with a bootstrap interval.

The rules (how a validation score is judged as a ranker of candidates, ``bench/openset_validation.py``):

* the estimate is Spearman's rho: Pearson's correlation of the two scores' ranks, ties given their
  mean rank (so it is 1 when one score orders the candidates exactly as the other, -1 reversed);
* the interval is a percentile bootstrap over **candidates**: each replicate draws ``n`` candidates
  with replacement (the pairs stay together), recomputes rho, and the interval holds the central
  ``level`` of the replicates (``evaluators.intervals.BootstrapSettings``: replicates, level, seed);
  a replicate whose draw leaves one of the scores constant has no correlation and is dropped, and
  the count kept is reported;
* at least 3 candidates are needed, and neither score may be constant; with a handful of candidates
  the interval is wide, which is the point of reporting it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluators.intervals import BootstrapSettings, Interval

MIN_CANDIDATES = 3


def ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``values`` (along the last axis), ties given their mean rank."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, axis=-1, kind="stable")
    ordered = np.take_along_axis(values, order, axis=-1)
    mean_ranks = np.empty_like(ordered)
    for row in np.ndindex(values.shape[:-1]):
        # Mean position of each run of equal values.
        _, first, counts = np.unique(ordered[row], return_index=True, return_counts=True)
        mean_ranks[row] = np.repeat(first + (counts + 1) / 2.0, counts)
    result = np.empty_like(mean_ranks)
    np.put_along_axis(result, order, mean_ranks, axis=-1)
    return result


def _pearson_rows(first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Pearson's correlation of each row pair; NaN where a row is constant."""
    first = first - first.mean(axis=-1, keepdims=True)
    second = second - second.mean(axis=-1, keepdims=True)
    denominator = np.sqrt((first**2).sum(axis=-1) * (second**2).sum(axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denominator > 0, (first * second).sum(axis=-1) / denominator, np.nan)


def spearman(first: np.ndarray, second: np.ndarray) -> float:
    """Spearman's rho of two scores of the same candidates (module rules)."""
    first, second = _checked(first, second)
    return float(_pearson_rows(ranks(first), ranks(second)))


@dataclass(frozen=True)
class RankCorrelation:
    interval: Interval
    candidates: int
    replicates_kept: int

    def as_dict(self) -> dict[str, float | int]:
        return {**self.interval.as_dict(), "candidates": self.candidates, "replicates_kept": self.replicates_kept}


def spearman_interval(first: np.ndarray, second: np.ndarray,
                      settings: BootstrapSettings = BootstrapSettings()) -> RankCorrelation:
    """Spearman's rho and its percentile bootstrap interval over candidates (module rules)."""
    first, second = _checked(first, second)
    rng = np.random.default_rng(settings.seed)
    draws = rng.integers(0, len(first), (settings.replicates, len(first)))
    replicates = _pearson_rows(ranks(first[draws]), ranks(second[draws]))
    kept = replicates[~np.isnan(replicates)]
    tail = 100 * (1 - settings.level) / 2
    low, high = np.percentile(kept, [tail, 100 - tail]) if kept.size else (np.nan, np.nan)
    estimate = float(_pearson_rows(ranks(first), ranks(second)))
    return RankCorrelation(Interval(estimate, float(low), float(high), settings.level), len(first), int(kept.size))


def _checked(first: np.ndarray, second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    first, second = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if first.ndim != 1 or first.shape != second.shape:
        raise ValueError(f"two scores of the same candidates are needed, got shapes {first.shape} and {second.shape}")
    if len(first) < MIN_CANDIDATES:
        raise ValueError(f"a rank correlation needs at least {MIN_CANDIDATES} candidates, got {len(first)}")
    if not (np.isfinite(first).all() and np.isfinite(second).all()):
        raise ValueError("every candidate needs a finite value of both scores")
    if np.ptp(first) == 0 or np.ptp(second) == 0:
        raise ValueError("a constant score orders no candidates: its rank correlation is undefined")
    return first, second
