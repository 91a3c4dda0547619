"""The weight-sharing supernet: every space of the registry, extraction parity, sandwich sampling."""

import random

import pytest
import torch
from torch import nn

from search_space import build_query_model, create_space, list_spaces
from search_space.supernet import (
    ElasticSupernet,
    SupernetMismatchError,
    extract_subnet,
    pointwise_conv,
    sandwich_specs,
)
from workers.compatibility.bn_calibration import recalibrate_batch_norm

SPACES = list_spaces()
# Images x pixels of the recalibration test: 64 images of 64 px. A 128-224 px space calibrates on
# fewer (at least 8), so each registered space costs about the same (under a second on one thread).
CALIBRATION_PIXELS = 64 * 64 * 64


def _randomise(module: nn.Module, seed: int = 0) -> None:
    """Non-trivial affine parameters and running statistics, so a wrong slice cannot go unnoticed."""
    generator = torch.Generator().manual_seed(seed)
    for layer in module.modules():
        if isinstance(layer, nn.modules.batchnorm._BatchNorm):
            layer.running_mean.copy_(0.1 * torch.randn(layer.running_mean.shape, generator=generator))
            layer.running_var.copy_(0.5 + torch.rand(layer.running_var.shape, generator=generator))
            layer.weight.data.copy_(1 + 0.2 * torch.randn(layer.weight.shape, generator=generator))
            layer.bias.data.copy_(0.1 * torch.randn(layer.bias.shape, generator=generator))


def _supernet(name: str) -> ElasticSupernet:
    torch.manual_seed(0)
    supernet = ElasticSupernet(create_space(name, embed_dim=32, in_chans=1))
    _randomise(supernet)
    return supernet


def _specs(space, count=4):
    return sandwich_specs(space, random.Random(1), count)


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_pointwise_product_equals_a_1x1_convolution_of_a_weight_slice(memory_format):
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(4, 16, 7, 5, generator=generator).contiguous(memory_format=memory_format)
    weight = torch.randn(24, 32, 1, 1, generator=generator)[:20, :16]  # a slice, as a subnet takes it
    result = pointwise_conv(images, weight)
    torch.testing.assert_close(result, torch.nn.functional.conv2d(images, weight), rtol=1e-5, atol=1e-5)
    assert result.is_contiguous(memory_format=memory_format)


@pytest.mark.parametrize("name", SPACES)
def test_extracted_subnet_is_the_builders_module_and_matches_the_supernet_forward(name):
    supernet = _supernet(name).eval()
    for spec in _specs(supernet.space):
        subnet = supernet.subnet(spec).eval()
        assert type(subnet) is type(build_query_model(spec))
        assert subnet.spec == spec
        images = torch.randn(2, 1, spec.resolution, spec.resolution)
        with torch.no_grad():
            expected, actual = supernet(images, spec), subnet(images)
        torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-6, msg=spec.short_name())


@pytest.mark.parametrize("name", SPACES)
def test_extraction_matches_a_standalone_module_loaded_with_the_same_weights(name):
    """Extraction = the builder's module + the supernet's slice: saving and reloading changes nothing."""
    supernet = _supernet(name)
    spec = _specs(supernet.space)[2]
    extracted = supernet.subnet(spec).eval()
    standalone = build_query_model(spec)
    standalone.load_state_dict(extracted.state_dict(), strict=True)
    standalone.eval()
    images = torch.randn(2, 1, spec.resolution, spec.resolution)
    with torch.no_grad():
        torch.testing.assert_close(standalone(images), extracted(images))
    # The inherited weights are the supernet's: kernels are centre crops, channels the leading ones.
    stage = next(index for index, stage in enumerate(spec.stages) if stage.kernel < supernet.space.stages[index].kernels[-1])
    block_index = sum(s.depth for s in spec.stages[:stage])
    kernel = spec.stages[stage].kernel
    offset = (max(supernet.space.stages[stage].kernels) - kernel) // 2
    mid = extracted.blocks[block_index].conv_dw.weight.shape[0]
    torch.testing.assert_close(
        extracted.blocks[block_index].conv_dw.weight,
        supernet.stages[stage][0].conv_dw.weight[:mid, :, offset:offset + kernel, offset:offset + kernel],
    )


@pytest.mark.parametrize("name", SPACES)
def test_largest_subnet_is_the_whole_supernet(name):
    supernet = _supernet(name)
    largest = supernet.subnet(supernet.space.largest())
    assert sum(p.numel() for p in largest.parameters()) == sum(p.numel() for p in supernet.parameters())


@pytest.mark.parametrize("name", SPACES)
def test_gradients_of_a_subnet_reach_only_its_slice_of_the_shared_weights(name):
    supernet = _supernet(name).train()
    spec = supernet.space.smallest()
    supernet(torch.randn(4, 1, spec.resolution, spec.resolution), spec).sum().backward()
    first = supernet.stages[0][0]
    mid = first.conv_pw.weight.grad.abs().sum(dim=(1, 2, 3)).nonzero().numel()
    assert 0 < mid < first.conv_pw.weight.shape[0]
    # Blocks beyond the subnet's depth get no gradient at all.
    assert all(p.grad is None for p in supernet.stages[0][-1].parameters())
    # Depthwise kernel: only the centre 3x3 of the 7x7 receives gradient.
    grad = first.conv_dw.weight.grad.abs().sum(dim=(0, 1))
    assert grad[2:5, 2:5].gt(0).all() and grad[0].eq(0).all() and grad[:, -1].eq(0).all()


@pytest.mark.parametrize("name", SPACES)
def test_sandwich_sampling_takes_the_largest_the_smallest_and_random_subnets(name):
    space = create_space(name, embed_dim=32, in_chans=1)
    specs = sandwich_specs(space, random.Random(7), 3)
    assert specs[0] == space.largest() and specs[1] == space.smallest()
    assert len(specs) == 5 and all(space.contains(spec) for spec in specs)
    assert specs == sandwich_specs(space, random.Random(7), 3)
    assert len({spec.arch_id for spec in specs[2:]}) > 1
    assert sandwich_specs(space, random.Random(7), 0) == specs[:2]


@pytest.mark.parametrize("name", SPACES)
def test_batch_norm_recalibration_estimates_the_subnets_own_statistics(name):
    supernet = _supernet(name)
    spec = _specs(supernet.space)[3]
    subnet = supernet.subnet(spec).eval()
    num_images = max(8, min(64, CALIBRATION_PIXELS // spec.resolution**2))
    torch.manual_seed(1)
    inputs = 2.0 + 3.0 * torch.randn(num_images * 3 // 2, 1, spec.resolution, spec.resolution)
    used = recalibrate_batch_norm(subnet, inputs, num_images=num_images, batch_size=num_images // 2)
    assert used == num_images and not subnet.training
    # The stem's statistics are those of its convolution's output over the chosen images.
    chosen = torch.randperm(len(inputs), generator=torch.Generator().manual_seed(0))[:num_images]
    with torch.no_grad():
        conv_out = subnet.stem.conv(inputs[chosen])
    torch.testing.assert_close(subnet.stem.bn.running_mean, conv_out.mean(dim=(0, 2, 3)), rtol=1e-4, atol=1e-4)
    assert subnet.stem.bn.momentum == 0.1
    # Every batch norm was re-estimated (none keeps the randomised values).
    norms = [m for m in subnet.modules() if isinstance(m, nn.BatchNorm2d)]
    reference = supernet.subnet(spec)
    before = [m for m in reference.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(not torch.equal(a.running_var, b.running_var) for a, b in zip(norms, before))


def test_weights_of_another_space_are_refused_naming_the_parameter():
    supernet = _supernet("mnv3_28")
    other = create_space("mnv3_64", embed_dim=32, in_chans=1).largest()
    with pytest.raises(SupernetMismatchError, match="cannot provide"):
        extract_subnet(supernet.state_dict(), other)
