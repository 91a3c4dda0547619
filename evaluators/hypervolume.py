"""Hypervolume of a two-objective front: the area it dominates, bounded by a reference point.

Definition. Objectives have senses ("max" or "min", as in ``evaluators.pareto``). The reference
point ``r`` must be worse than every point that should count: below it for "max", above it for
"min". The hypervolume of a set ``P`` is the area of the union over ``p`` in ``P`` of the boxes
spanned by ``p`` and ``r``. Points not strictly better than ``r`` in both objectives add nothing;
NaN points add nothing; adding a point never lowers the value, and a point dominated by the set
leaves it unchanged. cmpnas states its reference point as (accuracy 0, FLOPs of the paragon), so
a front's hypervolume is "accuracy-points x FLOPs saved relative to the paragon".
"""

from __future__ import annotations

import math
from typing import Sequence

from evaluators.pareto import SENSES


def hypervolume_2d(points: Sequence[Sequence[float]], reference: Sequence[float], senses: Sequence[str]) -> float:
    """The area dominated by ``points`` and bounded by ``reference`` (see the module docstring)."""
    if len(senses) != 2 or len(reference) != 2:
        raise ValueError("hypervolume_2d takes exactly two objectives and a two-value reference point")
    for sense in senses:
        if sense not in SENSES:
            raise ValueError(f"objective sense must be one of {SENSES}, got {sense!r}")
    flip = [1.0 if sense == "min" else -1.0 for sense in senses]
    ref = [value * sign for value, sign in zip(reference, flip)]
    # Minimisation form; keep points strictly better than the reference in both objectives.
    kept = sorted(
        (p[0] * flip[0], p[1] * flip[1])
        for p in points
        if len(p) == 2 and not any(math.isnan(v) for v in p)
        and p[0] * flip[0] < ref[0] and p[1] * flip[1] < ref[1]
    )
    area, best_second = 0.0, ref[1]
    for first, second in kept:  # ascending first objective: a staircase
        if second < best_second:
            area += (ref[0] - first) * (best_second - second)
            best_second = second
    return area
