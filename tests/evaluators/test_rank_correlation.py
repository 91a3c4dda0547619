"""Spearman's rank correlation and its bootstrap interval over candidates (evaluators.rank_correlation)."""

import numpy as np
import pytest
from scipy.stats import spearmanr

from evaluators.intervals import BootstrapSettings
from evaluators.rank_correlation import ranks, spearman, spearman_interval


def test_ties_take_their_mean_rank():
    assert ranks(np.array([3.0, 1.0, 1.0, 2.0])).tolist() == [4.0, 1.5, 1.5, 3.0]


def test_rho_is_scipys_with_ties():
    rng = np.random.default_rng(0)
    first = rng.normal(size=24)
    second = np.round(first + rng.normal(size=24), 1)
    second[5] = second[6]
    assert spearman(first, second) == pytest.approx(spearmanr(first, second).statistic)


def test_a_monotone_relation_is_one_and_a_reversed_one_minus_one_with_a_degenerate_interval():
    scores = np.arange(24.0)
    same = spearman_interval(scores, np.exp(scores / 5))
    assert same.interval.estimate == pytest.approx(1.0)
    assert same.interval.low == pytest.approx(1.0) and same.interval.high == pytest.approx(1.0)
    assert spearman_interval(scores, -scores).interval.high == pytest.approx(-1.0)


def test_the_interval_covers_the_population_correlation_about_as_often_as_its_level():
    # Gaussian pairs with Pearson correlation 0.6: Spearman's population value is 6/pi asin(0.3).
    true_rho = 6 / np.pi * np.arcsin(0.6 / 2)
    rng = np.random.default_rng(1)
    covered = 0
    for repeat in range(60):
        first = rng.normal(size=40)
        second = 0.6 * first + np.sqrt(1 - 0.36) * rng.normal(size=40)
        interval = spearman_interval(first, second, BootstrapSettings(replicates=400, seed=repeat)).interval
        assert interval.low <= interval.estimate <= interval.high
        covered += interval.low <= true_rho <= interval.high
    assert covered >= 0.85 * 60  # a percentile bootstrap at 95 %: close to, a little under, nominal


def test_independent_scores_give_an_interval_around_zero():
    rng = np.random.default_rng(2)
    result = spearman_interval(rng.normal(size=30), rng.normal(size=30))
    assert result.interval.low < 0 < result.interval.high
    assert result.candidates == 30 and result.replicates_kept == 2000


@pytest.mark.parametrize("first, second, fragment", [
    ([1.0, 2.0], [2.0, 1.0], "at least 3"), ([1.0, 1.0, 1.0], [1.0, 2.0, 3.0], "constant"),
    ([1.0, 2.0, np.nan], [1.0, 2.0, 3.0], "finite"), ([1.0, 2.0, 3.0], [1.0, 2.0], "same candidates")])
def test_scores_that_rank_nothing_are_refused(first, second, fragment):
    with pytest.raises(ValueError, match=fragment):
        spearman_interval(np.array(first), np.array(second))
