import math
import random

import pytest

from evaluators import hypervolume_2d, pareto_front

SENSES = ("max", "min")  # (accuracy, FLOPs)


def test_single_point_box():
    assert hypervolume_2d([(0.8, 10.0)], (0.0, 100.0), SENSES) == pytest.approx(0.8 * 90.0)


def test_two_points_union_counts_overlap_once():
    # boxes 1x1 and 2x0.5 overlap in 1x0.5
    assert hypervolume_2d([(1, 1), (2, 1.5)], (0, 2), SENSES) == pytest.approx(1.5)


def test_points_outside_reference_and_nan_add_nothing():
    assert hypervolume_2d([(-1, 1), (1, 3), (math.nan, 1)], (0, 2), SENSES) == 0.0


def test_min_min_senses():
    assert hypervolume_2d([(1, 1)], (3, 3), ("min", "min")) == pytest.approx(4.0)


def test_only_two_objectives():
    with pytest.raises(ValueError):
        hypervolume_2d([(1, 1, 1)], (0, 0, 0), ("max", "min", "min"))


def test_monotone_and_equal_to_front_value():
    rng = random.Random(3)
    points = [(rng.random(), rng.random() * 10) for _ in range(60)]
    reference = (0.0, 10.0)
    values = [hypervolume_2d(points[:n], reference, SENSES) for n in range(1, len(points) + 1)]
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))
    front = [points[i] for i in pareto_front(points, SENSES)]
    assert hypervolume_2d(front, reference, SENSES) == pytest.approx(values[-1])
    # Monte Carlo check of the area itself
    inside = 0
    samples = 20000
    for _ in range(samples):
        x, y = rng.random(), rng.random() * 10
        inside += any(a >= x and f <= y for a, f in points)
    assert hypervolume_2d(points, reference, SENSES) == pytest.approx(inside / samples * 10, rel=0.05)
