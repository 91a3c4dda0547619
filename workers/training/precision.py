"""bfloat16 autocast of a training step: where it is asked for, and where it pays.

Rules:

* a setting asks for it (``training.mixed_precision`` for the query models, ``gallery.mixed_precision``
  for the gallery model cmpnas trains); without it every step runs in float32;
* on a GPU it runs whenever asked;
* on a CPU it runs only where the trainer allows it (``on_cpu``) and the CPU computes bfloat16
  natively (AVX512_BF16 or AMX_BF16: ``native_bfloat16_cpu``); elsewhere bfloat16 is emulated and
  slower. The gallery trainer allows it: the embedded default's resnet10t gallery model trained
  1.46x faster on an AMD EPYC with AVX512_BF16 and 1.10x on an Intel Xeon with AMX, validation
  R@1 within 0.8 points (docs/benchmarks.md, "bfloat16 gallery training on a CPU"). The query
  models' trainer does not: a MobileNetV3-small training step (batch 256, one thread) ran 0.76x as
  fast in bfloat16 on that EPYC, and candidates' steps 2.5x slower on that Xeon;
* only the forward pass runs under autocast: trainers compute their losses in float32, and weights,
  optimizer state and every embedding stay float32.
"""

from __future__ import annotations

import contextlib
import functools

import torch

# The CPU flags (torch.cpu.get_capabilities) of native bfloat16 arithmetic.
NATIVE_BFLOAT16_FLAGS = ("avx512_bf16", "amx_bf16")


@functools.cache
def native_bfloat16_cpu() -> bool:
    """Whether this CPU computes bfloat16 natively (read once per process)."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is None:  # an older PyTorch without the public call: not known, so not used
        return False
    flags = get_capabilities()
    return any(flags.get(flag) for flag in NATIVE_BFLOAT16_FLAGS)


def autocast_dtype(device: torch.device, enabled: bool, on_cpu: bool = False) -> torch.dtype | None:
    """The dtype a step's forward pass runs in under the module's rules: bfloat16, or None for float32."""
    if not enabled:
        return None
    if device.type == "cuda" or (device.type == "cpu" and on_cpu and native_bfloat16_cpu()):
        return torch.bfloat16
    return None


def training_autocast(device: torch.device, enabled: bool, on_cpu: bool = False) -> contextlib.AbstractContextManager:
    """The autocast context of a step's forward pass (``autocast_dtype``); a no-op where it is float32."""
    dtype = autocast_dtype(device, enabled, on_cpu)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)
