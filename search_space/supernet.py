"""A weight-sharing supernet over a search space (Once-for-All style), and subnet extraction.

The supernet keeps one set of weights at the largest size of every choice: per stage the maximum
depth of blocks, each with the maximum width, expansion and depthwise kernel. A subnet uses

- depth: the first ``depth`` blocks of each stage;
- width and expansion: the first output / hidden channels of every layer (and the first input
  channels that the previous layer produced);
- kernel: the centre ``k x k`` crop of the largest depthwise kernel;
- resolution: only the size the input is resized to (the caller's preprocessing).

``forward(images, spec)`` runs that subnet with functional convolutions on slices of the shared
parameters, so gradients of every sampled subnet land in the shared weights. Batch norm uses the
sliced affine parameters; in training mode it normalises with batch statistics and leaves the
running statistics alone (they would mix every subnet's statistics), in eval mode it uses the
sliced running statistics. After extraction a subnet's statistics are recalibrated on training
images (``workers.compatibility.bn_calibration``).

``subnet(spec)`` returns the same standalone module ``build_query_model(spec)`` builds, with the
inherited weights copied in, so training, evaluation and export treat both alike.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from search_space.builder import QueryEmbeddingNet, build_query_model
from search_space.errors import CmpnasError
from search_space.flops import expanded_channels, se_reduced_channels
from search_space.registry import create_space
from search_space.space import SearchSpace
from search_space.spec import ArchSpec, StageSpec


class SupernetMismatchError(CmpnasError, ValueError):
    """Weights or a spec that belong to another search space (or embedding size) than the supernet."""


class ElasticSupernet(nn.Module):
    """All subnets of ``space`` in one module; its state dict holds the largest-size weights."""

    def __init__(self, space: SearchSpace):
        super().__init__()
        self.space = space
        largest = space.largest()
        # The largest network is built by the same builder as any subnet: the parameter names and
        # layouts of subnets are prefixes/crops of these by construction.
        reference = QueryEmbeddingNet(largest, space)
        self.stem = reference.stem
        self.stages = nn.ModuleList()
        position = 0
        for stage in largest.stages:
            self.stages.append(nn.ModuleList(reference.blocks[position : position + stage.depth]))
            position += stage.depth
        self.head = reference.head
        self.embedding = reference.embedding

    @classmethod
    def for_space(cls, name: str, *, embed_dim: int, in_chans: int) -> ElasticSupernet:
        return cls(create_space(name, embed_dim=embed_dim, in_chans=in_chans))

    # -- the elastic forward ---------------------------------------------------------------------
    def forward(self, images: torch.Tensor, spec: ArchSpec) -> torch.Tensor:
        """L2-normalised embeddings of ``images`` (already at ``spec.resolution``) by the subnet ``spec``."""
        self.space.validate(spec)
        stem = self.stem
        x = F.conv2d(images, stem.conv.weight, stride=stem.conv.stride, padding=stem.conv.padding)
        x = self._norm(stem.bn, x, x.shape[1])
        in_chs = self.space.stem_width
        for stage, choices, blocks in zip(spec.stages, self.space.stages, self.stages):
            for index in range(stage.depth):
                stride = choices.stride if index == 0 else 1
                x = self._block(blocks[index], x, in_chs, stage, stride)
                in_chs = stage.width
        features = x.mean((2, 3))
        linear = self.head[0]
        features = self.head[1](F.linear(features, linear.weight[:, :in_chs], linear.bias))
        return F.normalize(self.embedding(features), dim=1)

    def _block(self, block: nn.Module, x: torch.Tensor, in_chs: int, stage: StageSpec, stride: int) -> torch.Tensor:
        """One inverted-residual block of the subnet: ``stage``'s width, expansion and kernel sliced out of
        ``block``."""
        shortcut = x
        out_chs, kernel = stage.width, stage.kernel
        mid_chs = expanded_channels(in_chs, stage.expand)
        x = pointwise_conv(x, block.conv_pw.weight[:mid_chs, :in_chs])
        x = self._norm(block.bn1, x, mid_chs)
        dw_weight = centre_crop(block.conv_dw.weight[:mid_chs], kernel)
        # timm's static "same-style" padding for this kernel and stride (timm.layers.get_padding).
        x = F.conv2d(x, dw_weight, stride=stride, padding=((stride - 1) + (kernel - 1)) // 2, groups=mid_chs)
        x = self._norm(block.bn2, x, mid_chs)
        if not isinstance(block.se, nn.Identity):
            x = self._squeeze_excite(block.se, x, mid_chs)
        x = pointwise_conv(x, block.conv_pwl.weight[:out_chs, :mid_chs])
        x = self._norm(block.bn3, x, out_chs)
        # The same rule as timm's InvertedResidual.has_skip, for the subnet's own shapes.
        return x + shortcut if in_chs == out_chs and stride == 1 else x

    @staticmethod
    def _squeeze_excite(se: nn.Module, x: torch.Tensor, channels: int) -> torch.Tensor:
        reduced = se_reduced_channels(channels)
        scale = x.mean((2, 3))
        scale = F.linear(scale, se.conv_reduce.weight[:reduced, :channels].flatten(1), se.conv_reduce.bias[:reduced])
        scale = se.act1(scale)
        scale = F.linear(scale, se.conv_expand.weight[:channels, :reduced].flatten(1), se.conv_expand.bias[:channels])
        return x * se.gate(scale)[:, :, None, None]

    def _norm(self, bn: nn.Module, x: torch.Tensor, channels: int) -> torch.Tensor:
        """Batch norm (+ the layer's activation) over the first ``channels`` of a BatchNormAct2d."""
        if self.training:
            x = F.batch_norm(x, None, None, bn.weight[:channels], bn.bias[:channels], training=True, eps=bn.eps)
        else:
            x = F.batch_norm(x, bn.running_mean[:channels], bn.running_var[:channels], bn.weight[:channels],
                             bn.bias[:channels], training=False, eps=bn.eps)
        x = bn.drop(x)
        return bn.act(x)

    # -- extraction ------------------------------------------------------------------------------
    def subnet(self, spec: ArchSpec) -> QueryEmbeddingNet:
        """A standalone ``build_query_model(spec)`` carrying this supernet's weights for ``spec``."""
        return extract_subnet(self.state_dict(), spec, self.space)


def extract_subnet(supernet_state: Mapping[str, torch.Tensor], spec: ArchSpec,
                   space: SearchSpace | None = None) -> QueryEmbeddingNet:
    """Build ``spec`` and copy in its slice of a supernet state dict (an ``ElasticSupernet``'s).

    Works from the state dict alone, so trials can extract subnets without building the supernet.
    """
    model = build_query_model(spec)
    space = space or create_space(spec.space, embed_dim=spec.embed_dim, in_chans=spec.in_chans)
    names = _subnet_to_supernet_names(spec)
    target = model.state_dict()
    sliced = {}
    for name, tensor in target.items():
        source_name = names(name)
        if source_name not in supernet_state:
            raise SupernetMismatchError(
                f"the supernet weights have no {source_name!r} (needed for {name!r} of {spec.short_name()}): "
                f"they were not trained for the search space '{space.name}'"
            )
        sliced[name] = slice_like(supernet_state[source_name], tensor.shape, source_name)
    model.load_state_dict(sliced, strict=True)
    return model


def _subnet_to_supernet_names(spec: ArchSpec):
    """Map a subnet parameter name (``blocks.<j>.…``) to the supernet's (``stages.<s>.<i>.…``)."""
    block_names = [f"stages.{s}.{i}" for s, stage in enumerate(spec.stages) for i in range(stage.depth)]

    def rename(name: str) -> str:
        if not name.startswith("blocks."):
            return name
        _, index, rest = name.split(".", 2)
        return f"{block_names[int(index)]}.{rest}"

    return rename


def slice_like(tensor: torch.Tensor, shape: torch.Size, name: str = "tensor") -> torch.Tensor:
    """The sub-tensor of ``shape``: leading entries of every dimension, centre crop of conv kernels."""
    if tensor.dim() != len(shape) or any(want > have for want, have in zip(shape, tensor.shape)):
        raise SupernetMismatchError(f"{name} has shape {tuple(tensor.shape)}, cannot provide {tuple(shape)}")
    if tensor.dim() == 0:
        return tensor.clone()
    result = tensor[tuple(slice(0, size) for size in shape[:2])]
    if tensor.dim() == 4:
        result = centre_crop(result, shape[-1])
    return result.clone()


def pointwise_conv(x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """A 1x1 convolution (no bias) of ``x`` (N, C, H, W) with ``weight`` (O, C, 1, 1), as a matrix product.

    Every subnet slices the shared weights to its own channel counts, so a supernet step meets
    shapes no earlier step had. On CUDA a convolution pays for each new shape: with cuDNN a plan
    per shape made sandwich steps take seconds, and without cuDNN PyTorch's fallback loops over the
    images of the batch (measured on an H100; docs/benchmarks.md). A matrix product goes to cuBLAS
    for any shape at once, and on the CPU it runs as fast as the convolution.
    """
    matrix = weight.flatten(1)
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return F.linear(x.permute(0, 2, 3, 1), matrix).permute(0, 3, 1, 2)
    batch, channels, height, width = x.shape
    return torch.matmul(matrix, x.reshape(batch, channels, height * width)).view(batch, -1, height, width)


def centre_crop(weight: torch.Tensor, kernel: int) -> torch.Tensor:
    """The centre ``kernel x kernel`` of a (out, in, K, K) convolution weight."""
    offset = (weight.shape[-1] - kernel) // 2
    return weight[..., offset : offset + kernel, offset : offset + kernel]


def sandwich_specs(space: SearchSpace, rng: random.Random, num_random: int) -> list[ArchSpec]:
    """The sandwich rule of one training step: the largest, the smallest and ``num_random`` uniform subnets."""
    return [space.largest(), space.smallest(), *(space.sample(rng) for _ in range(num_random))]


def supernet_identity(space: SearchSpace) -> dict[str, object]:
    """What a supernet checkpoint must match to be used for a search (recorded in its metadata)."""
    return {"kind": "supernet", "space": space.name, "embed_dim": space.embed_dim, "in_chans": space.in_chans}
