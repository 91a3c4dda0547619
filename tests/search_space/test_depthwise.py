"""FastDepthwiseConv2d (search_space/depthwise.py): the gradients are PyTorch's up to rounding, the cheaper
weight gradient is taken only where the rules say (on CPUs where it pays), and a query model holds the same
parameters, computes the same embeddings and counts the same FLOPs with it as with plain convolutions."""

from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from search_space import build_query_model, create_space, estimate_mflops
import search_space.builder as builder
from evaluators import count_complexity
import search_space.depthwise as depthwise
from search_space.depthwise import FastDepthwiseConv2d, depthwise_weight_gradient, pays_on, with_fast_depthwise


# (channels, map height x width, kernel height x width, stride, padding): square and not, even and odd maps.
SHAPES = [(8, (3, 3), (7, 7), (1, 1), (3, 3)), (6, (6, 6), (7, 7), (2, 2), (3, 3)), (5, (4, 4), (5, 5), (1, 1), (2, 2)),
          (4, (5, 5), (3, 3), (2, 2), (1, 1)), (3, (9, 9), (5, 5), (2, 2), (2, 2)), (4, (2, 2), (3, 3), (1, 1), (1, 1)),
          (3, (4, 7), (5, 3), (2, 1), (2, 1)), (2, (6, 3), (7, 5), (1, 2), (1, 2)), (3, (5, 6), (7, 7), (3, 2), (1, 3))]


@pytest.mark.parametrize("channels,size,kernel,stride,padding", SHAPES)
@pytest.mark.parametrize("channels_last", [False, True])
def test_the_weight_gradient_is_pytorchs(channels, size, kernel, stride, padding, channels_last):
    generator = torch.Generator().manual_seed(channels * size[0] + kernel[1])
    images = torch.randn(7, channels, *size, generator=generator, dtype=torch.float64)
    weight = torch.randn(channels, 1, *kernel, generator=generator, dtype=torch.float64, requires_grad=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    output = F.conv2d(images, weight, stride=stride, padding=padding, groups=channels)
    grad_output = torch.randn(output.shape, generator=generator, dtype=torch.float64)
    (expected,) = torch.autograd.grad(output, weight, grad_output)
    ours = depthwise_weight_gradient(images, grad_output, kernel, stride, padding)
    assert ours.shape == expected.shape
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


def _pair(kernel: int, stride: int) -> tuple[nn.Conv2d, FastDepthwiseConv2d]:
    plain = nn.Conv2d(16, 16, kernel, stride=stride, padding=kernel // 2, groups=16, bias=False)
    fast = with_fast_depthwise(nn.Sequential(plain))[0]
    return plain, fast


@pytest.mark.parametrize("size,kernel,stride,fast_path", [(3, 7, 1, True), (6, 7, 2, True), (4, 5, 1, True),
                                                          (8, 7, 2, False), (7, 5, 2, False), (3, 3, 1, False)])
def test_training_on_a_cpu_takes_the_fast_gradient_only_where_the_kernel_is_larger_than_the_map(size, kernel, stride,
                                                                                                fast_path, monkeypatch):
    monkeypatch.setattr(depthwise, "ENABLED", True)  # as on a CPU where it pays, whatever this one is
    plain, fast = _pair(kernel, stride)
    assert isinstance(fast, FastDepthwiseConv2d) and fast.weight is plain.weight
    images = torch.randn(32, 16, size, size, requires_grad=True)
    output = fast(images)
    assert ("_DepthwiseConvolution" in type(output.grad_fn).__name__) is fast_path
    grad_output = torch.randn_like(output)
    grads = torch.autograd.grad(output, (images, fast.weight), grad_output)
    expected = torch.autograd.grad(plain(images), (images, plain.weight), grad_output)
    for ours, theirs in zip(grads, expected):
        torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_evaluation_no_grad_cpu_autocast_and_unbatched_input_run_pytorchs_convolution(monkeypatch):
    monkeypatch.setattr(depthwise, "ENABLED", True)
    plain, fast = _pair(7, 1)
    images = torch.randn(4, 16, 3, 3)
    with torch.no_grad():
        assert fast(images).grad_fn is None
    images.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bfloat16 gradients: PyTorch's path, which takes them
        output = fast(images)
        assert "_DepthwiseConvolution" not in type(output.grad_fn).__name__
    output.float().sum().backward()
    single = images[0].detach().requires_grad_()  # one (C, H, W) image, as nn.Conv2d takes it
    (ours,) = torch.autograd.grad(fast(single).sum(), fast.weight)
    (theirs,) = torch.autograd.grad(plain(single).sum(), plain.weight)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    fast.eval()
    assert "_DepthwiseConvolution" not in type(fast(images).grad_fn).__name__


def test_a_query_model_keeps_its_parameters_initial_weights_and_embeddings(monkeypatch):
    space = create_space("mnv3_28", embed_dim=32, in_chans=1)
    rng = random.Random(3)
    spec = next(spec for spec in iter(lambda: space.sample(rng), None) if estimate_mflops(space, spec) <= 3.0)
    torch.manual_seed(0)
    model = build_query_model(spec)
    assert any(isinstance(module, FastDepthwiseConv2d) for module in model.modules())
    # The same seed gives the same initial weights as plain convolutions would: replacing draws nothing.

    monkeypatch.setattr(builder, "with_fast_depthwise", lambda blocks: blocks)
    torch.manual_seed(0)
    expected_state = build_query_model(spec).state_dict()
    state = model.state_dict()
    assert list(state) == list(expected_state)
    for name, value in state.items():
        torch.testing.assert_close(value, expected_state[name], rtol=0, atol=0)
    images = torch.rand(5, 1, spec.resolution, spec.resolution)
    model.eval()
    plain = build_query_model(spec)
    assert not any(isinstance(module, FastDepthwiseConv2d) for module in plain.modules())
    plain.load_state_dict(state)
    torch.testing.assert_close(model(images), plain.eval()(images), rtol=0, atol=0)
    # fvcore traces the same convolutions: the FLOPs of the front are counted as before.
    shape = (1, spec.resolution, spec.resolution)
    assert count_complexity(model, shape) == count_complexity(plain, shape)


# (AVX2, AVX-512 core, ONEDNN_MAX_CPU_ISA, pays): a cap lowers what the CPU has and never raises it.
CPU_CASES = [(True, False, None, True), (True, True, None, False), (False, False, None, False),
             (True, True, "AVX2", True), (True, True, "avx2_vnni", True), (True, True, "AVX2_VNNI_2", True),
             (True, False, "AVX512_CORE", True), (True, False, "AVX512_CORE_BF16", True), (True, False, "ALL", True),
             (True, True, "ALL", False), (True, True, "AVX512_CORE_AMX", False), (True, True, "AVX10_1_512", False),
             (True, False, "SSE41", False), (True, False, "avx", False), (False, False, "AVX2", False),
             (True, True, "avx2x", False), (True, False, "", True)]


@pytest.mark.parametrize("has_avx2,has_avx512_core,onednn_max_isa,pays", CPU_CASES)
def test_it_pays_only_where_onednn_runs_avx2_kernels_without_avx512(has_avx2, has_avx512_core, onednn_max_isa, pays):
    assert pays_on(has_avx2, has_avx512_core, onednn_max_isa) is pays


AVX512_CPU = {"avx2": True, "avx512_f": True, "avx512_bw": True, "avx512_vl": True, "avx512_dq": True}
AVX2_CPU = {"avx2": True, "avx512_f": False}


@pytest.mark.parametrize("flags,variable,cap,pays", [
    (AVX2_CPU, None, None, True), (AVX512_CPU, None, None, False), (AVX512_CPU, "ONEDNN_MAX_CPU_ISA", "AVX2", True),
    (AVX512_CPU, "DNNL_MAX_CPU_ISA", "avx2", True), (AVX2_CPU, "ONEDNN_MAX_CPU_ISA", "AVX512_CORE_BF16", True)])
def test_by_default_the_cpus_hardware_and_onednns_cap_decide(flags, variable, cap, pays, monkeypatch):
    monkeypatch.setattr(depthwise, "ENABLED", None)
    monkeypatch.setattr(torch.cpu, "get_capabilities", lambda: flags)
    # PyTorch's own kernels' level, which ATEN_CPU_CAPABILITY can lower and oneDNN ignores: not read.
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: "AVX2")
    for name in depthwise.ONEDNN_ISA_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    if variable is not None:
        monkeypatch.setenv(variable, cap)
    depthwise.pays_on_this_cpu.cache_clear()
    try:
        _, fast = _pair(7, 1)
        output = fast(torch.randn(4, 16, 3, 3, requires_grad=True))
        assert ("_DepthwiseConvolution" in type(output.grad_fn).__name__) is pays
    finally:
        depthwise.pays_on_this_cpu.cache_clear()  # the next test reads this process's own CPU again
