"""The latency budget of proposals (orchestrator.strategies.latency_gate, search.max_latency_ms)."""

import math
import pickle

from evaluators.latency import LatencySettings
from orchestrator.strategies.latency_gate import AllOf, WithinLatency, proposal_constraint
from search_space import create_space

FAST = LatencySettings(warmup=5, runs=40)


def test_the_gate_admits_the_small_and_refuses_the_large_and_times_each_architecture_once(monkeypatch):
    from orchestrator.strategies import latency_gate

    timed = []
    real_measure = latency_gate.measure_model_latency

    def counting_measure(*args, **kwargs):  # each call is a real ONNX export and timing (about 7 CPU-s)
        timed.append(args[1])
        return real_measure(*args, **kwargs)

    monkeypatch.setattr(latency_gate, "measure_model_latency", counting_measure)
    space = create_space("mnv3_28", embed_dim=32, in_chans=1)
    small, large = space.smallest(), space.largest()
    gate = WithinLatency(math.inf, FAST)
    small_ms, large_ms = gate.latency_ms(small), gate.latency_ms(large)
    assert large_ms > 2 * small_ms
    assert gate(small) and gate(large)  # no budget: both admitted
    gate.max_latency_ms = math.sqrt(small_ms * large_ms)  # a budget well between the two
    assert gate(small) and not gate(large)
    assert len(timed) == 2 and gate.measured_ms == {small.arch_id: small_ms, large.arch_id: large_ms}  # once each
    assert pickle.loads(pickle.dumps(gate)).max_latency_ms == gate.max_latency_ms  # travels with the searcher


def test_constraints_combine_in_order_and_absent_ones_drop_out():
    calls = []

    def first(spec):
        calls.append("first")
        return False

    def second(spec):
        calls.append("second")
        return True

    assert proposal_constraint(None, None) is None
    assert proposal_constraint(None, second) is second
    combined = proposal_constraint(first, second)
    assert isinstance(combined, AllOf) and combined("spec") is False and calls == ["first"]  # cheapest first
