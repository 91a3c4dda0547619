"""The paragon's cost from an ONNX or TorchScript gallery model: counted on the shapes one run
produces, equal to fvcore's count of the module within 5% (the exporters fold batch norm into the
convolutions, which fvcore counts at two flops per element), and refused with the fix
``gallery.mflops`` where it cannot be counted, never recorded as zero."""

from __future__ import annotations

import math
import warnings

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from evaluators import count_complexity
from workers.gallery.sources import GallerySourceError, GallerySourceRequest, InputSpecRequest, load_gallery_model
from workers.gallery.sources.onnx_flops import count_onnx_flops

# The ONNX count may miss batch norm (folded by the exporter): a few per cent of a small network.
FVCORE_TOLERANCE = 0.05
SPEC = InputSpecRequest(size=32, channels=3, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))


class SamePaddedConv(nn.Conv2d):
    """TensorFlow's "same" padding, computed from the input's shape at run time (as TF-ported
    EfficientNets do): exported, its pad widths come from Shape/Gather/Div nodes that static shape
    inference cannot follow."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        pads = []
        for size, kernel, stride in zip((width, height), self.weight.shape[-1:-3:-1], self.stride[::-1]):
            total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
            pads += [total // 2, total - total // 2]
        return F.conv2d(F.pad(x, pads), self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _dynamic_padding_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(SamePaddedConv(3, 16, 3, stride=2), nn.BatchNorm2d(16), nn.ReLU(),
                         SamePaddedConv(16, 32, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(32, 24)).eval()


def _request(path, spec=SPEC) -> GallerySourceRequest:
    # allow_torchscript: the test's own traced module (gallery.allow_torchscript).
    return GallerySourceRequest(path=path, input=spec, data_channels=1, data_image_size=28, allow_torchscript=True)


def test_dynamically_padded_models_cost_what_fvcore_counts_from_onnx_and_torchscript(tmp_path):
    net = _dynamic_padding_net()
    example = torch.rand(2, 3, 32, 32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (example,), str(tmp_path / "same.onnx"), input_names=["images"], dynamo=False,
                          dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}})
        torch.jit.trace(net, example).save(str(tmp_path / "same.pt"))
    assert {"Shape", "Pad"} <= {node.op_type for node in onnx.load(str(tmp_path / "same.onnx")).graph.node}
    fvcore = count_complexity(net, (3, 32, 32)).flops
    assert fvcore > 400_000
    for source, name in (("onnx", "same.onnx"), ("torchscript", "same.pt")):
        cost = load_gallery_model(source, _request(tmp_path / name)).measure_cost()
        assert cost.flops == pytest.approx(fvcore, rel=FVCORE_TOLERANCE), source
        assert cost.input_shape == (3, 32, 32) and "one multiply-add = one flop" in cost.convention


def test_a_fixed_batch_model_costs_one_image(tmp_path):
    net = _dynamic_padding_net()
    path = tmp_path / "batch4.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.rand(4, 3, 32, 32),), str(path), input_names=["images"], dynamo=False)
    fvcore = count_complexity(net, (3, 32, 32)).flops
    assert count_onnx_flops(path, (1, 3, 32, 32)).flops == pytest.approx(fvcore, rel=FVCORE_TOLERANCE)


def _save(graph, path) -> None:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def test_a_model_without_multiply_adds_is_refused_with_gallery_mflops(tmp_path):
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 32, 32])
    embeddings = helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, ["N", 3072])
    path = tmp_path / "flatten.onnx"
    _save(helper.make_graph([helper.make_node("Flatten", ["images"], ["embeddings"])], "flat", [images], [embeddings]),
          path)
    model = load_gallery_model("onnx", _request(path))
    assert model.embed_dim == 3072  # a usable model, whose cost cannot be counted
    with pytest.raises(GallerySourceError, match="no Conv, Gemm or MatMul.*set gallery.mflops"):
        model.measure_cost()


def test_a_convolution_inside_a_subgraph_is_refused_not_counted_as_zero(tmp_path):
    """The Conv in each branch of an If has no exposed shape: refused, though the MatMul outside counts."""
    images = helper.make_tensor_value_info("images", TensorProto.FLOAT, ["N", 3, 8, 8])
    embeddings = helper.make_tensor_value_info("embeddings", TensorProto.FLOAT, None)
    branch_out = helper.make_tensor_value_info("convolved", TensorProto.FLOAT, None)
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "weight")
    branch = helper.make_graph([helper.make_node("Conv", ["images", "weight"], ["convolved"])], "branch", [],
                               [branch_out])
    flag = numpy_helper.from_array(np.array(True), "flag")
    projection = numpy_helper.from_array(np.ones((144, 5), np.float32), "projection")
    nodes = [helper.make_node("If", ["flag"], ["features"], then_branch=branch, else_branch=branch),
             helper.make_node("Flatten", ["features"], ["flat"]),
             helper.make_node("MatMul", ["flat", "projection"], ["embeddings"])]
    path = tmp_path / "if.onnx"
    _save(helper.make_graph(nodes, "if", [images], [embeddings], initializer=[weight, flag, projection]), path)
    with pytest.raises(GallerySourceError, match=r"no shape for \{'Conv': 2\}.*set gallery.mflops"):
        count_onnx_flops(path, (1, 3, 8, 8))
