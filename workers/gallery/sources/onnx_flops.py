"""FLOPs of an ONNX model, counted on the shapes one real forward pass produces.

Convention, fvcore's (``evaluators.complexity``): one multiply-add = one flop. Conv, ConvTranspose,
Gemm and MatMul count their multiply-adds; BatchNormalization two per input element (fvcore's
inference-mode batch norm with scale and shift); GlobalAveragePool, AveragePool and ReduceMean one
per input element; every other operator counts as zero and is listed in ``skipped_ops``, as fvcore
lists what it skips.

Why run the model rather than infer shapes: static shape inference cannot follow shapes computed
at run time ("same" padding whose widths come from ``Shape``/``Slice``, as TensorFlow-ported
EfficientNets export), and an unresolved shape counted as zero, so such a model cost "0 MFLOPs".
Here every intermediate value is made a graph output and the model runs once in ONNX Runtime on
the CPU, on zeros of the input size: every counted shape is one the graph produced.

A cost that still cannot be counted is refused with the fix, never returned as zero: a main
operator (Conv, ConvTranspose, Gemm, MatMul) without a produced shape or inside a subgraph (If,
Loop, Scan), a model that does not run on its input, or no multiply-adds at all. The fix is
``gallery.mflops``, the cost given by hand.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from evaluators.complexity import ComplexityReport
from workers.gallery.sources.base import GallerySourceError

ONNX_FLOPS_CONVENTION = ("ONNX graph run once, fvcore's convention: one multiply-add = one flop (Conv, Gemm, MatMul); "
                         "BatchNormalization two and average pooling one per input element; other ops counted as zero")
MAIN_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Operators counted per element of their first input, and how many flops each element costs.
PER_INPUT_ELEMENT = {"BatchNormalization": 2, "GlobalAveragePool": 1, "AveragePool": 1, "ReduceMean": 1}
GALLERY_MFLOPS_FIX = ("set gallery.mflops to the model's MFLOPs per image (one multiply-add = one flop, as fvcore "
                      "counts)")

Shapes = dict[str, tuple[int, ...]]


def count_onnx_flops(path: Path, input_shape: tuple[int, ...], description: str | None = None) -> ComplexityReport:
    """FLOPs per image of one forward pass on ``input_shape`` (N, C, H, W), counted on the produced shapes.

    A model with a fixed batch size runs on that batch and the count is divided by it. Raises
    ``GallerySourceError`` naming ``gallery.mflops`` where the cost cannot be counted."""
    import onnx

    described = description or f"ONNX model {path}"
    try:
        model = onnx.load(str(path))
    except Exception as error:  # noqa: BLE001 - protobuf and file errors alike mean "not countable here"
        raise GallerySourceError(f"the cost of {described} cannot be counted: onnx cannot read it "
                                 f"({str(error)[:200]}); {GALLERY_MFLOPS_FIX}") from error
    shapes, batch = _produced_shapes(model, input_shape, described)
    shapes.update({init.name: tuple(int(d) for d in init.dims) for init in model.graph.initializer})
    flops, skipped, unresolved = 0, Counter(), Counter()
    for node in model.graph.node:
        counted = _node_flops(node, shapes)
        if counted is None:
            (unresolved if node.op_type in MAIN_OPS else skipped)[node.op_type] += 1
        else:
            flops += counted
        unresolved.update(_main_ops_in_subgraphs(node))
    if unresolved or flops <= 0:
        reason = (f"no shape for {dict(sorted(unresolved.items()))} (inside a subgraph or not produced by the run)"
                  if unresolved else "it holds no Conv, Gemm or MatMul with multiply-adds")
        raise GallerySourceError(f"the cost of {described} cannot be counted: {reason}; {GALLERY_MFLOPS_FIX}")
    params = sum(int(np.prod(init.dims)) for init in model.graph.initializer)
    return ComplexityReport(flops=flops // batch, params=params, input_shape=tuple(input_shape[1:]),
                            skipped_ops=dict(sorted(skipped.items())), convention=ONNX_FLOPS_CONVENTION)


def _produced_shapes(model, input_shape: tuple[int, ...], described: str) -> tuple[Shapes, int]:
    """Shapes of every value the top-level graph produces on zeros of ``input_shape`` (its batch
    replaced by the model's fixed one, if any), and the batch size the model ran on."""
    import onnx
    import onnxruntime

    exposed = onnx.ModelProto()
    exposed.CopyFrom(model)
    declared = {output.name for output in exposed.graph.output}
    names = [name for node in exposed.graph.node for name in node.output if name and name not in declared]
    # An output needs only its name: ONNX Runtime takes its type from the producing node.
    exposed.graph.output.extend(onnx.ValueInfoProto(name=name) for name in dict.fromkeys(names))
    options = onnxruntime.SessionOptions()
    # Fusions would hide the operators being counted (and cannot apply to exposed values anyway).
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_DISABLE_ALL
    try:
        session = onnxruntime.InferenceSession(exposed.SerializeToString(), options,
                                               providers=["CPUExecutionProvider"])
        first = session.get_inputs()[0]
        batch = first.shape[0] if first.shape and isinstance(first.shape[0], int) else input_shape[0]
        values = session.run(None, {first.name: np.zeros((batch, *input_shape[1:]), dtype=np.float32)})
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own exception types
        raise GallerySourceError(f"the cost of {described} cannot be counted: it does not run once on a "
                                 f"{'x'.join(map(str, input_shape[1:]))} input in ONNX Runtime "
                                 f"({str(error)[:300]}); {GALLERY_MFLOPS_FIX}") from error
    outputs = [output.name for output in session.get_outputs()]
    shapes = {name: tuple(int(d) for d in value.shape) for name, value in zip(outputs, values)
              if isinstance(value, np.ndarray)}
    shapes[first.name] = (batch, *input_shape[1:])
    return shapes, int(batch)


def _node_flops(node, shapes: Shapes) -> int | None:
    """The node's flops in the convention above; 0 for an operator counted as zero is returned as
    None (skipped), as is a counted operator whose shapes are missing."""
    def shape(index: int, outputs: bool = False) -> tuple[int, ...] | None:
        names = node.output if outputs else node.input
        return shapes.get(names[index]) if len(names) > index and names[index] else None

    if node.op_type in ("Conv", "ConvTranspose"):
        # Conv: each output element reads C_in/groups x kernel; ConvTranspose: each input element
        # writes C_out/groups x kernel. Both are the weight's shape past its first dimension.
        counted, weight = shape(0, outputs=node.op_type == "Conv"), shape(1)
        return None if counted is None or weight is None else int(np.prod(counted)) * int(np.prod(weight[1:]))
    if node.op_type in ("Gemm", "MatMul"):
        output, first = shape(0, outputs=True), shape(0)
        if output is None or first is None:
            return None
        transposed = node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
        inner = first[-2] if transposed and len(first) > 1 else first[-1]
        return int(np.prod(output)) * int(inner)
    if node.op_type in PER_INPUT_ELEMENT:
        source = shape(0)
        return None if source is None else int(np.prod(source)) * PER_INPUT_ELEMENT[node.op_type]
    return None


def _main_ops_in_subgraphs(node) -> Counter:
    """Main operators inside ``node``'s subgraphs (If, Loop, Scan): their shapes are not exposed, so
    they cannot be counted."""
    import onnx

    found = Counter()
    for attribute in node.attribute:
        graphs = [attribute.g] if attribute.type == onnx.AttributeProto.GRAPH else list(attribute.graphs)
        for graph in graphs:
            for inner in graph.node:
                if inner.op_type in MAIN_OPS:
                    found[inner.op_type] += 1
                found.update(_main_ops_in_subgraphs(inner))
    return found
