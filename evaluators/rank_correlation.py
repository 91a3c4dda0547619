"""Spearman rank correlation: how well one list of scores orders items like another.

Defined as the Pearson correlation of the two rank vectors, ties sharing their average rank.
Returns NaN when fewer than two pairs are given or when either list is constant (no order to
compare), rather than an arbitrary number.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def average_ranks(values: Sequence[float]) -> np.ndarray:
    array = np.asarray(values, dtype=float)
    order = np.argsort(array, kind="mergesort")
    ranks = np.empty(len(array), dtype=float)
    sorted_values = array[order]
    start = 0
    while start < len(array):
        stop = start
        while stop + 1 < len(array) and sorted_values[stop + 1] == sorted_values[start]:
            stop += 1
        ranks[order[start : stop + 1]] = (start + stop) / 2 + 1
        start = stop + 1
    return ranks


def spearman(first: Sequence[float], second: Sequence[float]) -> float:
    if len(first) != len(second):
        raise ValueError(f"spearman needs paired lists, got lengths {len(first)} and {len(second)}")
    if len(first) < 2:
        return math.nan
    a, b = average_ranks(first), average_ranks(second)
    a, b = a - a.mean(), b - b.mean()
    denominator = math.sqrt(float((a * a).sum() * (b * b).sum()))
    return float((a * b).sum() / denominator) if denominator > 0 else math.nan
