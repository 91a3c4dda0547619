"""FLOPs of an architecture without building it: an analytic count, layer by layer.

The figure a trial records is fvcore's count on the built model (``evaluators.count_complexity``);
this module gives the same number in microseconds, so that proposals can be steered under a budget
before anything is built. Rules:

- It follows ``search_space.builder`` layer for layer (stem of stride ``space.stem_stride``, timm
  ``InvertedResidual`` blocks with optional squeeze-excite, pooled head, embedding) and fvcore's
  convention: one multiply-add is one flop; a convolution costs
  ``out_h * out_w * out_channels * in_channels/groups * k * k`` (bias not counted); a linear layer
  ``in * out``; batch norm in eval mode ``2 * elements`` (scale and shift); adaptive average
  pooling ``input elements``; activations, ``mean``, element-wise add and mul count zero, as
  fvcore skips them.
- Channel rounding is timm's own (``make_divisible``), so expansion and squeeze-excite widths match.
- ``tests/search_space/test_flops.py`` checks it against fvcore on every registered space (the
  extremes and a stratified sample); the stated tolerance is 0.1 % relative, the measured difference
  is zero. A change to the builder must change this module too, or that test fails.
- The cost of a spec is a sum over the stem, each stage and the head, where a stage's cost depends
  only on its own genes, the previous stage's width and the input resolution (``stage_flops``):
  ``search_space.budget`` relies on that chain to sample under a budget exactly.
"""

from __future__ import annotations

from timm.layers import make_divisible

from search_space.space import SearchSpace, StageChoices
from search_space.spec import ArchSpec, StageSpec

SE_RATIO = 0.25  # MobileNetV3's squeeze-excite reduction, as the builder's SqueezeExcite uses it
STEM_KERNEL = 3


def conv_output_size(size: int, kernel: int, stride: int) -> int:
    """Output side of a timm convolution with static "same-style" padding (timm.layers.get_padding)."""
    padding = ((stride - 1) + (kernel - 1)) // 2
    return (size + 2 * padding - kernel) // stride + 1


def expanded_channels(in_chs: int, expand: int) -> int:
    """Hidden width of an inverted-residual block, rounded as timm's InvertedResidual rounds it."""
    return make_divisible(in_chs * expand)


def se_reduced_channels(channels: int) -> int:
    """Squeeze-excite width for ``channels``, as the builder's SqueezeExcite rounds it."""
    return make_divisible(channels * SE_RATIO, 8)


def stem_output_size(space: SearchSpace, resolution: int) -> int:
    """Side of the stem's output, the input of the first stage."""
    return conv_output_size(resolution, STEM_KERNEL, space.stem_stride)


def stem_flops(space: SearchSpace, resolution: int) -> int:
    """The 3x3 stem convolution (stride ``space.stem_stride``) and its batch norm."""
    pixels = stem_output_size(space, resolution) ** 2
    return pixels * space.stem_width * space.in_chans * STEM_KERNEL**2 + 2 * pixels * space.stem_width


def block_flops(in_chs: int, stage: StageSpec, stride: int, size: int, use_se: bool) -> tuple[int, int]:
    """(flops, output side) of one inverted-residual block of ``stage`` (its width, kernel and expansion)
    on a ``size`` x ``size`` input of ``in_chs`` channels."""
    out_chs, kernel = stage.width, stage.kernel
    mid = expanded_channels(in_chs, stage.expand)
    out_size = conv_output_size(size, kernel, stride)
    flops = size * size * mid * (in_chs + 2)  # pointwise expansion + batch norm
    flops += out_size * out_size * mid * (kernel * kernel + 2)  # depthwise + batch norm
    if use_se:
        flops += 2 * mid * se_reduced_channels(mid)  # two 1x1 convolutions on the pooled vector
    flops += out_size * out_size * out_chs * (mid + 2)  # pointwise projection + batch norm
    return flops, out_size


def stage_flops(choices: StageChoices, stage: StageSpec, in_chs: int, size: int) -> tuple[int, int]:
    """(flops, output side) of one stage: its first block strides, the others keep the size."""
    total = 0
    for index in range(stage.depth):
        flops, size = block_flops(in_chs, stage, choices.stride if index == 0 else 1, size, choices.use_se)
        total += flops
        in_chs = stage.width
    return total, size


def head_flops(space: SearchSpace, in_chs: int, size: int) -> int:
    """Global average pooling, the head's linear layer and the embedding projection."""
    return size * size * in_chs + in_chs * space.head_width + space.head_width * space.embed_dim


def estimate_flops(space: SearchSpace, spec: ArchSpec) -> int:
    """FLOPs (multiply-adds, fvcore's convention) of ``spec``'s query model for one image."""
    total = stem_flops(space, spec.resolution)
    in_chs, size = space.stem_width, stem_output_size(space, spec.resolution)
    for choices, stage in zip(space.stages, spec.stages):
        flops, size = stage_flops(choices, stage, in_chs, size)
        total += flops
        in_chs = stage.width
    return total + head_flops(space, in_chs, size)


def estimate_mflops(space: SearchSpace, spec: ArchSpec) -> float:
    return estimate_flops(space, spec) / 1e6
