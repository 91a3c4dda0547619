"""The FLOPs of a proposal, measured with fvcore on the built model and remembered per architecture.

Counting builds and traces the model (about a second on a small CPU), and strategies ask for the
same architecture many times (constraint, budget targeting, screening), so results are cached by
``arch_id``. The figure is the one a trial reports: same builder, same fvcore convention.
"""

from __future__ import annotations

from evaluators import count_complexity
from search_space import ArchSpec, build_query_model


class FlopsCounter:
    """``counter(spec)`` -> fvcore MFLOPs of the query model for one image."""

    def __init__(self) -> None:
        self.cache: dict[str, float] = {}

    def __call__(self, spec: ArchSpec) -> float:
        if spec.arch_id not in self.cache:
            model = build_query_model(spec)
            self.cache[spec.arch_id] = count_complexity(model, (spec.in_chans, spec.resolution, spec.resolution)).mflops
        return self.cache[spec.arch_id]


class WithinBudget:
    """A picklable constraint: ``spec`` costs at most ``max_mflops``."""

    def __init__(self, counter: FlopsCounter, max_mflops: float):
        self.counter = counter
        self.max_mflops = max_mflops

    def __call__(self, spec: ArchSpec) -> bool:
        return self.counter(spec) <= self.max_mflops
