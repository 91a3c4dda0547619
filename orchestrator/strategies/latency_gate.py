"""The latency budget of proposals (``search.max_latency_ms``), for teams that deploy on a known CPU.

Rules:
* a proposal passes when its latency, timed as every candidate's is (``evaluators.latency``: its ONNX
  export in ONNX Runtime, batch 1, one thread, median after warm-up), is at most the budget;
* it is timed before it becomes a trial, on untrained weights (latency does not depend on the
  weights' values), in the process that proposes: run the search's driver on the CPU the query
  model will be deployed on, or the gate measures another machine;
* each architecture is timed once per search (cached by ``arch_id``); the trial times the trained
  model again, and that is the figure recorded;
* the gate comes after the FLOPs gate (``strategies.cost``), which costs microseconds where this one
  costs about a second.
"""

from __future__ import annotations

from evaluators.latency import LatencySettings, measure_model_latency
from orchestrator.strategies.base import Constraint
from search_space import ArchSpec, build_query_model


class WithinLatency:
    """A picklable constraint: ``spec`` runs in at most ``max_latency_ms`` (module rules)."""

    def __init__(self, max_latency_ms: float, settings: LatencySettings = LatencySettings()):
        self.max_latency_ms = max_latency_ms
        self.settings = settings
        self.measured_ms: dict[str, float] = {}

    def latency_ms(self, spec: ArchSpec) -> float:
        if spec.arch_id not in self.measured_ms:
            model = build_query_model(spec).eval()
            input_shape = (spec.in_chans, spec.resolution, spec.resolution)
            self.measured_ms[spec.arch_id] = measure_model_latency(model, input_shape, self.settings).median_ms
        return self.measured_ms[spec.arch_id]

    def __call__(self, spec: ArchSpec) -> bool:
        return self.latency_ms(spec) <= self.max_latency_ms


class AllOf:
    """A picklable constraint met when each of ``constraints`` is, asked in order (cheapest first)."""

    def __init__(self, *constraints: Constraint):
        self.constraints = constraints

    def __call__(self, spec: ArchSpec) -> bool:
        return all(constraint(spec) for constraint in self.constraints)


def proposal_constraint(*constraints: Constraint | None) -> Constraint | None:
    """The given constraints (None: absent) as one, or None when there is none."""
    present = [constraint for constraint in constraints if constraint is not None]
    if not present:
        return None
    return present[0] if len(present) == 1 else AllOf(*present)
