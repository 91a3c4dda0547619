"""The 224 px space after Once-for-All's MobileNetV3 (``ofa_mnv3_224``): its choices, its feature
map sizes, its FLOPs range, and sampling under a budget with its supernet.

The registry-driven tests (test_space, test_flops, test_budget, test_supernet) cover it like every
space; these pin what makes it OFA's space.
"""

import random

import pytest
import torch

from search_space import build_query_model, create_space, estimate_flops
from search_space.budget import ceiling_mflops, floor_mflops, within_budget
from search_space.flops import conv_output_size, stem_output_size
from search_space.supernet import ElasticSupernet

NAME = "ofa_mnv3_224"


@pytest.fixture
def space():
    return create_space(NAME, embed_dim=128, in_chans=3)


def test_the_choices_are_once_for_alls(space):
    assert space.resolutions == (128, 160, 192, 224)
    assert (space.stem_width, space.stem_stride, space.head_width) == (16, 2, 1280)
    assert (space.embed_dim, space.in_chans) == (128, 3)
    for stage in space.stages:
        assert stage.kernels == (3, 5, 7) and stage.expands == (3, 4, 6) and stage.depths == (2, 3, 4)
    # OFA's widths at width multipliers 1.0 and 1.2, its strides, squeeze-excite and activations.
    assert [stage.widths for stage in space.stages] == [(24, 32), (40, 48), (80, 96), (112, 136), (160, 192)]
    assert [stage.stride for stage in space.stages] == [2, 2, 2, 1, 2]
    assert [stage.use_se for stage in space.stages] == [False, True, False, True, True]
    assert [stage.activation for stage in space.stages] == ["relu", "relu", "hard_swish", "hard_swish", "hard_swish"]


def test_embed_dim_and_in_chans_come_from_the_gallery_and_the_data():
    space = create_space(NAME, embed_dim=48, in_chans=1)
    spec = space.smallest()
    assert (spec.embed_dim, spec.in_chans) == (48, 1)
    with torch.no_grad():
        out = build_query_model(spec).eval()(torch.randn(1, 1, 128, 128))
    assert out.shape == (1, 48)


@pytest.mark.parametrize(("resolution", "sides"), [(224, [112, 56, 28, 14, 14, 7]), (128, [64, 32, 16, 8, 8, 4])])
def test_feature_maps_shrink_32_fold_as_in_ofa(space, resolution, sides):
    spec = space.from_genes([resolution, *space.to_genes(space.smallest())[1:]])
    model = build_query_model(spec).eval()
    measured = []
    with torch.no_grad():
        x = model.stem(torch.zeros(1, 3, resolution, resolution))
        measured.append(x.shape[-1])
        blocks = iter(model.blocks)
        for stage in spec.stages:
            for _ in range(stage.depth):
                x = next(blocks)(x)
            measured.append(x.shape[-1])
    assert measured == sides
    # The FLOPs count follows the same sizes: the stem halves, each stage applies its stride.
    expected, size = [stem_output_size(space, resolution)], stem_output_size(space, resolution)
    for choices in space.stages:
        size = conv_output_size(size, 3, choices.stride)
        expected.append(size)
    assert expected == sides


def test_the_flops_range_is_pinned(space):
    # fvcore's count of these two is checked equal to this estimate in test_flops (and stated in the
    # space's docstring): 37.04 to 802.22 MFLOPs for 3 channels and a 128-wide embedding.
    assert estimate_flops(space, space.smallest()) == 37_036_160
    assert estimate_flops(space, space.largest()) == 802_217_232
    assert (floor_mflops(space), ceiling_mflops(space)) == pytest.approx((37.03616, 802.217232), abs=1e-9)


def test_the_small_spaces_keep_their_stride_1_stem_and_costs():
    # The stem stride is a field of the space; spaces that do not set it are unchanged
    # (the figures are those of docs/benchmarks.md, embedding 128, 1 input channel).
    for name, floor, ceiling in (("mnv3_28", 0.826144, 22.948816), ("mnv3_64", 4.761168, 107.487744)):
        small = create_space(name, embed_dim=128, in_chans=1)
        assert small.stem_stride == 1
        assert (floor_mflops(small), ceiling_mflops(small)) == pytest.approx((floor, ceiling), abs=1e-9)


@pytest.mark.parametrize("budget", [60.0, 150.0, 400.0])
def test_budgeted_samples_fit_and_their_subnets_match_the_supernet(space, budget):
    budgeted = within_budget(space, budget)
    rng = random.Random(0)
    samples = [budgeted.sample(rng) for _ in range(100)]
    assert all(space.contains(spec) and estimate_flops(space, spec) <= budget * 1e6 for spec in samples)
    # Uniform over what fits: every resolution whose smallest architecture fits is drawn at 400.
    if budget == 400.0:
        assert {spec.resolution for spec in samples} == set(space.resolutions)
    torch.manual_seed(0)
    supernet = ElasticSupernet(space).eval()
    spec = samples[0]
    images = torch.randn(1, 3, spec.resolution, spec.resolution)
    with torch.no_grad():
        torch.testing.assert_close(supernet.subnet(spec).eval()(images), supernet(images, spec), rtol=1e-5, atol=1e-6)
