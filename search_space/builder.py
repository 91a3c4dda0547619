"""Build a standalone query model from an architecture spec, out of timm's MobileNetV3 blocks.

The blocks' depthwise convolutions are ``search_space.depthwise.FastDepthwiseConv2d``: the same
parameters and, in evaluation and export, the same convolution; training on a CPU whose oneDNN lacks
AVX-512 kernels, a cheaper weight gradient on small feature maps (that module's rules).
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from timm.layers import ConvNormAct, make_divisible
from timm.models._efficientnet_blocks import InvertedResidual, SqueezeExcite
from torch import nn

from search_space.depthwise import with_fast_depthwise
from search_space.registry import create_space
from search_space.space import SearchSpace
from search_space.spec import ArchSpec

_ACTIVATION_LAYERS = {"relu": nn.ReLU, "hard_swish": nn.Hardswish}


class QueryEmbeddingNet(nn.Module):
    """Inverted-residual stages, pooled, projected to the gallery's dimension and L2-normalised."""

    def __init__(self, spec: ArchSpec, space: SearchSpace):
        super().__init__()
        space.validate(spec)
        self.spec = spec
        self.stem = ConvNormAct(spec.in_chans, space.stem_width, 3, stride=space.stem_stride, act_layer=nn.Hardswish)
        blocks: list[nn.Module] = []
        in_chs = space.stem_width
        for stage, choices in zip(spec.stages, space.stages):
            act_layer = _ACTIVATION_LAYERS[choices.activation]
            se_layer = _se_layer() if choices.use_se else None
            for index in range(stage.depth):
                blocks.append(
                    InvertedResidual(
                        in_chs,
                        stage.width,
                        dw_kernel_size=stage.kernel,
                        stride=choices.stride if index == 0 else 1,
                        exp_ratio=float(stage.expand),
                        act_layer=act_layer,
                        se_layer=se_layer,
                    )
                )
                in_chs = stage.width
        self.blocks = with_fast_depthwise(nn.Sequential(*blocks))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Linear(in_chs, space.head_width), nn.Hardswish())
        self.embedding = nn.Linear(space.head_width, spec.embed_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        features = self.pool(self.blocks(self.stem(images))).flatten(1)
        return F.normalize(self.embedding(self.head(features)), dim=1)


def _se_layer() -> partial:
    # MobileNetV3's squeeze-excite: hard-sigmoid gate, ReLU inside, reduced width rounded to 8.
    return partial(
        SqueezeExcite,
        gate_layer="hard_sigmoid",
        force_act_layer=nn.ReLU,
        rd_round_fn=partial(make_divisible, divisor=8),
    )


def build_query_model(spec: ArchSpec) -> QueryEmbeddingNet:
    """The one factory for query models: validates ``spec`` against its space, then builds it."""
    space = create_space(spec.space, embed_dim=spec.embed_dim, in_chans=spec.in_chans)
    return QueryEmbeddingNet(spec, space)
