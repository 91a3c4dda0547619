"""Cost of a model: FLOPs and parameters (fvcore); its latency is ``evaluators.latency``'s.

FLOPs convention: fvcore counts one fused multiply-add as one flop, so the figures are MACs.
Operators fvcore has no handle for (activations, element-wise add/mul, ...) count as zero; every
report carries the list of such operators and how often they were seen, so the gap is visible.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

FLOPS_CONVENTION = "fvcore: one multiply-add = one flop (MACs); unsupported ops counted as zero"


@dataclass(frozen=True)
class ComplexityReport:
    flops: int
    params: int
    input_shape: tuple[int, ...]
    skipped_ops: dict[str, int] = field(default_factory=dict)
    convention: str = FLOPS_CONVENTION

    @property
    def mflops(self) -> float:
        return self.flops / 1e6


def count_complexity(model: nn.Module, input_shape: tuple[int, ...]) -> ComplexityReport:
    """FLOPs for one image of ``input_shape`` (C, H, W), parameters, and the ops fvcore skipped."""
    from fvcore.nn import FlopCountAnalysis

    was_training = model.training
    model.eval()
    try:
        example = torch.zeros((1, *input_shape), device=_device_of(model))
        analysis = FlopCountAnalysis(model, example)
        analysis.unsupported_ops_warnings(False)
        analysis.uncalled_modules_warnings(False)
        flops = int(analysis.total())
        skipped = {str(op): int(count) for op, count in sorted(analysis.unsupported_ops().items())}
    finally:
        model.train(was_training)
    params = sum(parameter.numel() for parameter in model.parameters())
    return ComplexityReport(flops=flops, params=params, input_shape=tuple(input_shape), skipped_ops=skipped)


def _device_of(model: nn.Module) -> torch.device:
    parameter = next(model.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")
