"""Pareto dominance and fronts over any number of objectives.

Definition used throughout cmpnas. Each objective has a sense, "max" or "min". A point ``a``
*dominates* a point ``b`` if and only if ``a`` is at least as good as ``b`` in every objective
and strictly better in at least one ("at least as good" means >= for "max", <= for "min"). The
*Pareto front* of a set is the subset of its points that no point of the set dominates. Equal
points do not dominate each other, so duplicates of a front point are all on the front. Points
with a NaN in any objective are never on the front and never dominate.
"""

from __future__ import annotations

import math
from typing import Sequence

SENSES = ("max", "min")


def _check_senses(senses: Sequence[str]) -> None:
    for sense in senses:
        if sense not in SENSES:
            raise ValueError(f"objective sense must be one of {SENSES}, got {sense!r}")


def dominates(a: Sequence[float], b: Sequence[float], senses: Sequence[str]) -> bool:
    """True if ``a`` dominates ``b`` under ``senses`` (see the module docstring)."""
    _check_senses(senses)
    if len(a) != len(senses) or len(b) != len(senses):
        raise ValueError("points and senses must have the same length")
    if any(math.isnan(value) for value in (*a, *b)):
        return False
    strictly_better = False
    for x, y, sense in zip(a, b, senses):
        better, worse = (x > y, x < y) if sense == "max" else (x < y, x > y)
        if worse:
            return False
        strictly_better |= better
    return strictly_better


def pareto_front(points: Sequence[Sequence[float]], senses: Sequence[str]) -> list[int]:
    """Indices of the non-dominated points, in their input order."""
    _check_senses(senses)
    front = []
    for i, candidate in enumerate(points):
        if any(math.isnan(value) for value in candidate):
            continue
        if not any(dominates(other, candidate, senses) for j, other in enumerate(points) if j != i):
            front.append(i)
    return front
