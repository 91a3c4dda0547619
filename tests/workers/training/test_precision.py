"""bfloat16 autocast of a training step (workers/training/precision.py): asked for, then on a GPU always and
on a CPU only where the trainer allows it and the CPU computes bfloat16 natively."""

from __future__ import annotations

import pytest
import torch

import workers.training.precision as precision
from workers.training.precision import autocast_dtype, training_autocast

CPU, GPU = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def native_bfloat16(monkeypatch, request):
    """This process's CPU as one with (param True) or without native bfloat16, read afresh."""
    flags = {"avx512_bf16": request.param, "amx_bf16": False}
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    precision.native_bfloat16_cpu.cache_clear()
    yield request.param
    precision.native_bfloat16_cpu.cache_clear()


@pytest.mark.parametrize("native_bfloat16", [True, False], indirect=True)
@pytest.mark.parametrize("device,enabled,on_cpu", [(CPU, True, True), (CPU, True, False), (CPU, False, True),
                                                   (GPU, True, False), (GPU, False, False)])
def test_bfloat16_where_asked_on_a_gpu_and_on_a_native_cpu_the_trainer_allows(native_bfloat16, device, enabled,
                                                                              on_cpu):
    expected = enabled and (device.type == "cuda" or (on_cpu and native_bfloat16))
    assert autocast_dtype(device, enabled, on_cpu) == (torch.bfloat16 if expected else None)


@pytest.mark.parametrize("native_bfloat16", [True], indirect=True)
def test_amx_alone_counts_as_native(native_bfloat16, monkeypatch):
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: {"avx512_bf16": False, "amx_bf16": True})
    precision.native_bfloat16_cpu.cache_clear()
    assert precision.native_bfloat16_cpu()


@pytest.mark.parametrize("native_bfloat16", [True, False], indirect=True)
def test_the_context_runs_the_forward_pass_in_the_dtype_it_names(native_bfloat16):
    layer = torch.nn.Linear(4, 3)
    with training_autocast(CPU, enabled=True, on_cpu=True):
        output = layer(torch.randn(2, 4))
    assert output.dtype == (torch.bfloat16 if native_bfloat16 else torch.float32)
    assert layer.weight.dtype == torch.float32
