"""Bootstrap intervals over queries and seeds (evaluators.intervals)."""

import numpy as np
import pytest

from evaluators.intervals import BootstrapSettings, mean_interval, paired_difference_interval

FAST = BootstrapSettings(replicates=400, seed=1)


def _hits(rate, queries, seed):
    return (np.random.default_rng(seed).random(queries) < rate).astype(float)


def test_the_interval_of_one_run_matches_the_binomial_standard_error():
    hits = _hits(0.8, 4000, seed=0)
    interval = mean_interval([hits], FAST)
    assert interval.estimate == pytest.approx(hits.mean())
    # A 95 % interval spans about 2 x 1.96 standard errors of a proportion.
    width = 2 * 1.96 * np.sqrt(hits.mean() * (1 - hits.mean()) / len(hits))
    assert interval.high - interval.low == pytest.approx(width, rel=0.2)
    assert interval.low < hits.mean() < interval.high


def test_seeds_that_disagree_widen_the_interval():
    agreeing = [_hits(0.8, 2000, seed) for seed in range(3)]
    disagreeing = [_hits(rate, 2000, seed) for seed, rate in enumerate((0.7, 0.8, 0.9))]
    narrow, wide = mean_interval(agreeing, FAST), mean_interval(disagreeing, FAST)
    assert (wide.high - wide.low) > 2 * (narrow.high - narrow.low)


def test_a_paired_difference_is_narrower_than_the_unpaired_spread_when_methods_share_hard_queries():
    rng = np.random.default_rng(5)
    difficulty = rng.random(3000)
    better = [(difficulty < 0.82).astype(float)]
    worse = [(difficulty < 0.80).astype(float)]  # the same easy queries, two points fewer
    difference = paired_difference_interval(better, worse, FAST)
    assert difference.estimate == pytest.approx(0.02, abs=1e-9)
    assert difference.excludes_zero()
    separate = mean_interval(better, FAST)
    assert (difference.high - difference.low) < (separate.high - separate.low) / 2


def test_no_difference_gives_an_interval_around_zero():
    runs = [_hits(0.75, 3000, seed) for seed in range(3)]
    others = [_hits(0.75, 3000, seed + 10) for seed in range(3)]
    assert not paired_difference_interval(runs, others, FAST).excludes_zero()


def test_runs_over_different_queries_are_refused():
    with pytest.raises(ValueError, match="same non-empty queries"):
        mean_interval([np.ones(10), np.ones(11)], FAST)
    with pytest.raises(ValueError, match="same queries"):
        paired_difference_interval([np.ones(10)], [np.ones(11)], FAST)
    with pytest.raises(ValueError, match="replicates"):
        BootstrapSettings(replicates=10)
