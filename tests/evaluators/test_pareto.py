import math

import pytest

from evaluators import dominates, pareto_front

SENSES = ("max", "min")  # (accuracy, FLOPs)


def test_dominance_needs_no_worse_everywhere_and_better_somewhere():
    assert dominates((80, 2), (70, 3), SENSES)
    assert dominates((80, 2), (80, 3), SENSES)
    assert not dominates((80, 2), (80, 2), SENSES)
    assert not dominates((80, 3), (70, 2), SENSES)
    assert not dominates((math.nan, 1), (70, 3), SENSES)


def test_front_keeps_trade_offs_and_duplicates_and_drops_dominated_and_nan():
    points = [(80, 5), (75, 2), (70, 3), (80, 5), (60, 1), (math.nan, 0.5), (85, 10)]
    assert pareto_front(points, SENSES) == [0, 1, 3, 4, 6]


def test_bad_sense_is_refused():
    with pytest.raises(ValueError, match="max"):
        pareto_front([(1, 2)], ("up", "min"))
