"""Depthwise convolutions whose weight gradient is cheaper on a CPU without AVX-512 when the kernel is larger
than the map.

Why: without its AVX-512 kernels, oneDNN (PyTorch's CPU convolutions) computes a depthwise
convolution's *weight* gradient slowly when the kernel is larger than the input feature map (the
last stages of a 28-pixel query model: a 7x7 kernel on a 3x3 to 6x6 map, a 5x5 kernel on a 4x4
map). On the machine of the first measurement (instruction sets not recorded; its steps as slow as
AVX2 kernels' or slower) such a layer took 21-85 ms per step of 256 images, ten to a hundred times
its forward pass, against 0.2-8 ms where the kernel is not larger than the map (docs/benchmarks.md,
"Depthwise weight gradients on the CPU").

How: the weight gradient of a depthwise convolution is itself a grouped convolution, one group per
channel, of the input (the batch as its channels) with the output gradient (the batch as its
channels) as the kernel, dilated by the stride::

    grad_w[c, i, j] = sum_n sum_{h, w} x_pad[n, c, s*h + i, s*w + j] * grad_y[n, c, h, w]

which oneDNN computes as a forward pass: 1.1-5x faster on those shapes, 4-50x slower on the others
(so they keep PyTorch's). The input gradient is PyTorch's own. Results equal PyTorch's up to float
rounding (the sums run in another order).

Whether it pays depends on oneDNN's kernels, so on the CPU (docs/benchmarks.md): with oneDNN's AVX2
kernels PyTorch's weight gradient is the slow one, and this path made a candidate's step 1.12x
faster (geometric mean over 8 architectures, 7 of which take it; an AVX-512 CPU with oneDNN capped at
AVX2) and 1.18x on a machine whose instruction sets were not recorded. With oneDNN's AVX-512 kernels
PyTorch's own steps were 1.24x faster in all, and this path made them 7.5% slower (an AMD EPYC) and
12% slower (an Intel Xeon with AMX). Elsewhere (ARM, x86 without AVX2) it was not measured, so
PyTorch's path is kept.

Rules:

* used only where it pays: a CPU whose oneDNN runs AVX2 kernels without AVX-512 (``pays_on``: the
  CPU's AVX2 and AVX-512 and a cap set by ``ONEDNN_MAX_CPU_ISA``), training with gradients on (a
  batch of 4-d images, no CPU autocast), and the kernel larger than the input map in both directions;
* in evaluation, on a GPU, and under ``torch.no_grad``, ``FastDepthwiseConv2d`` is ``nn.Conv2d``: the
  graph that is exported, counted for FLOPs and timed is PyTorch's convolution, unchanged;
* the module holds the same parameters under the same names, so checkpoints load either way.
"""

from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F
from torch import nn

# None: on where it pays (``pays_on_this_cpu``); bench/depthwise_gradient.py sets False and True to time
# both paths on one machine.
ENABLED: bool | None = None

# oneDNN's cap on its instruction set (its older name: DNNL_MAX_CPU_ISA); oneDNN reads it once, at its start.
ONEDNN_ISA_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")
# Caps at which oneDNN runs AVX2 kernels (on a CPU with AVX2), and caps below AVX2.
AVX2_CAPS = frozenset({"AVX2", "AVX2_VNNI", "AVX2_VNNI_2"})
BELOW_AVX2_CAPS = frozenset({"SSE41", "AVX"})
# The AVX-512 subsets of oneDNN's avx512_core kernels.
AVX512_CORE_FLAGS = ("avx512_f", "avx512_bw", "avx512_vl", "avx512_dq")


def pays_on(has_avx2: bool, has_avx512_core: bool, onednn_max_isa: str | None) -> bool:
    """Whether oneDNN runs AVX2 kernels without AVX-512, on a CPU with ``has_avx2``/``has_avx512_core``
    (the hardware) under the cap ``onednn_max_isa`` (None or empty: no cap). A cap only lowers what
    the CPU has; one that oneDNN does not know (or ``ALL``, or an AVX-512 level) leaves the CPU's."""
    if not has_avx2:
        return False
    cap = (onednn_max_isa or "").strip().upper()
    if cap in BELOW_AVX2_CAPS:
        return False
    if cap in AVX2_CAPS:
        return True
    return not has_avx512_core


def cpu_vector_support() -> tuple[bool, bool]:
    """(AVX2, AVX-512 core) of this CPU's hardware, as PyTorch's cpuinfo reads it: not what
    ``ATEN_CPU_CAPABILITY`` tells PyTorch's own kernels to use, which oneDNN ignores."""
    get_capabilities = getattr(torch.cpu, "get_capabilities", None)
    if get_capabilities is None:  # older PyTorch: its kernels' level, the CPU's unless ATEN_CPU_CAPABILITY is set
        level = torch.backends.cpu.get_cpu_capability()
        return level in ("AVX2", "AVX512"), level == "AVX512"
    flags = get_capabilities()
    return bool(flags.get("avx2")), all(flags.get(flag) for flag in AVX512_CORE_FLAGS)


def onednn_isa_cap() -> str | None:
    """The cap on oneDNN's instruction set this process's environment sets (``ONEDNN_ISA_VARIABLES``), or None."""
    return next((os.environ[name] for name in ONEDNN_ISA_VARIABLES if os.environ.get(name)), None)


@functools.cache
def pays_on_this_cpu() -> bool:
    """``pays_on`` for this process's CPU and oneDNN cap, decided once per process (as oneDNN does)."""
    return pays_on(*cpu_vector_support(), onednn_isa_cap())


def is_enabled() -> bool:
    """The module switch: ``ENABLED`` when set, else whether it pays on this CPU."""
    return pays_on_this_cpu() if ENABLED is None else ENABLED


class _DepthwiseConvolution(torch.autograd.Function):
    """A depthwise convolution (no bias, zero padding) with the weight gradient of the module's rules."""

    @staticmethod
    def forward(ctx, images: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int],
                padding: tuple[int, int]) -> torch.Tensor:
        ctx.save_for_backward(images, weight)
        ctx.stride, ctx.padding = stride, padding
        return F.conv2d(images, weight, stride=stride, padding=padding, groups=weight.shape[0])

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        images, weight = ctx.saved_tensors
        grad_images = grad_weight = None
        if ctx.needs_input_grad[0]:
            grad_images = torch.ops.aten.convolution_backward(
                grad_output, images, weight, None, list(ctx.stride), list(ctx.padding), [1, 1], False, [0, 0],
                weight.shape[0], [True, False, False])[0]
        if ctx.needs_input_grad[1]:
            grad_weight = depthwise_weight_gradient(images, grad_output, weight.shape[-2:], ctx.stride, ctx.padding)
        return grad_images, grad_weight, None, None


def depthwise_weight_gradient(images: torch.Tensor, grad_output: torch.Tensor, kernel: tuple[int, int],
                              stride: tuple[int, int], padding: tuple[int, int]) -> torch.Tensor:
    """The weight gradient (C, 1, kh, kw) of a depthwise convolution, as a grouped convolution (module rules)."""
    batch, channels, height, width = images.shape
    per_channel = images.transpose(0, 1).reshape(1, channels * batch, height, width)
    kernels = grad_output.transpose(0, 1).contiguous()  # (C, N, Ho, Wo): channel c's group reads its N images
    full = F.conv2d(per_channel, kernels, padding=padding, dilation=stride, groups=channels)
    return full[0, :, : kernel[0], : kernel[1]].unsqueeze(1).contiguous()


class FastDepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d`` of a depthwise convolution, training on a CPU with the cheaper weight gradient where the
    kernel is larger than the map (module rules)."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        if self._takes_fast_gradient(images):
            return _DepthwiseConvolution.apply(images, self.weight, self.stride, self.padding)
        return super().forward(images)

    def _takes_fast_gradient(self, images: torch.Tensor) -> bool:
        # Not under CPU autocast: its bfloat16 output gradient would meet float32 saved tensors in backward.
        return (self.training and torch.is_grad_enabled() and images.device.type == "cpu"
                and images.dim() == 4 and not torch.is_autocast_enabled("cpu") and self.weight.requires_grad
                and self.kernel_size[0] > images.shape[-2] and self.kernel_size[1] > images.shape[-1]
                and is_enabled())


def is_plain_depthwise(module: nn.Module) -> bool:
    """Whether ``module`` is an ``nn.Conv2d`` that ``FastDepthwiseConv2d`` computes the same way."""
    return (type(module) is nn.Conv2d and module.groups == module.in_channels == module.out_channels > 1
            and module.bias is None and module.padding_mode == "zeros" and module.dilation == (1, 1)
            and isinstance(module.padding, tuple))


def with_fast_depthwise(model: nn.Module) -> nn.Module:
    """``model`` with each plain depthwise ``nn.Conv2d`` replaced by a ``FastDepthwiseConv2d`` holding the
    same parameter (in place; returned for chaining)."""
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if is_plain_depthwise(child):
                fast = FastDepthwiseConv2d(child.in_channels, child.out_channels, child.kernel_size,
                                           stride=child.stride, padding=child.padding, groups=child.groups,
                                           bias=False, device="meta")
                fast.weight = child.weight
                fast.train(child.training)
                setattr(parent, name, fast)
    return model
