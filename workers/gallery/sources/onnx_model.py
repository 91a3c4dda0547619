"""``gallery.source: onnx``: an ONNX model run with ONNX Runtime (CUDA when a GPU is there, else CPU).

The model's first input takes normalised float32 images (N, C, H, W) and its first output is the
(N, D) embedding; cmpnas L2-normalises it. Input defaults, in order: ``gallery.input``; the
model's metadata property ``cmpnas.input`` (JSON with size, channels, mean, std, as
``cmpnas gallery export`` writes it); the static dimensions of the input (channels, size). A
static input size other than the configured one is refused: the model cannot take it.

The paragon's cost is counted on the graph in fvcore's convention (one multiply-add = one flop):
Conv, Gemm and MatMul by their multiply-adds, BatchNormalization and average pooling by the
elements they read; other operators count as zero and are listed, as fvcore lists them.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from evaluators.complexity import ComplexityReport
from workers.gallery.sources.base import (
    GalleryInputSpec,
    GalleryModel,
    GallerySourceError,
    GallerySourceRequest,
    check_finite,
    files_fingerprint,
    normalized_rows,
)
from workers.gallery.sources.registry import register_gallery_source

METADATA_KEY = "cmpnas.input"
ONNX_FLOPS_CONVENTION = ("ONNX graph, fvcore's convention: one multiply-add = one flop (Conv, Gemm, MatMul); "
                         "BatchNormalization and average pooling one per input element; other ops counted as zero")


class OnnxGalleryModel(GalleryModel):
    source = "onnx"

    def __init__(self, path: Path, session, fingerprint: str, spec: GalleryInputSpec, embed_dim: int):
        super().__init__(fingerprint, spec, embed_dim, f"onnx:{path.name}")
        self.path = path
        self.session = session
        self.input_name = session.get_inputs()[0].name

    def embed(self, images: np.ndarray, ids: Sequence[str], device: torch.device, batch_size: int = 256
              ) -> np.ndarray:
        chunks = []
        for start in range(0, len(images), batch_size):
            inputs = self.input_spec.model_input(images[start : start + batch_size]).numpy()
            output = self.session.run(None, {self.input_name: inputs})[0]
            chunks.append(np.asarray(output, dtype=np.float32).reshape(len(inputs), -1))
        self.images_embedded += len(images)
        embeddings = np.concatenate(chunks) if chunks else np.zeros((0, self.embed_dim), np.float32)
        check_finite(embeddings, f"ONNX gallery model {self.path}", "check the model and gallery.input (mean, std)")
        return normalized_rows(embeddings)

    def measure_cost(self) -> ComplexityReport:
        spec = self.input_spec
        return count_onnx_flops(self.path, (1, spec.channels, spec.size, spec.size))


@register_gallery_source("onnx")
def load_onnx_gallery(request: GallerySourceRequest) -> OnnxGalleryModel:
    import onnxruntime

    try:
        session = onnxruntime.InferenceSession(str(request.path), providers=_providers(onnxruntime))
    except Exception as error:  # noqa: BLE001 - ORT raises its own exception types
        raise GallerySourceError(f"gallery.path={str(request.path)!r} is not an ONNX model ONNX Runtime can load "
                                 f"({str(error)[:300]}); export one with torch.onnx.export") from error
    model_input = session.get_inputs()[0]
    shape = list(model_input.shape)
    if len(shape) != 4:
        raise GallerySourceError(f"ONNX gallery model {request.path} takes input {model_input.name!r} of shape {shape}; "
                                 "gallery.source 'onnx' needs images (N, C, H, W)")
    static_channels = shape[1] if isinstance(shape[1], int) else None
    static_size = shape[2] if isinstance(shape[2], int) else None
    recorded = _recorded_input(session)
    spec = request.input.resolve(
        size=recorded.get("size") or static_size or request.data_image_size,
        channels=recorded.get("channels") or static_channels or request.data_channels,
        mean=recorded.get("mean"), std=recorded.get("std"), source="onnx")
    for name, static, wanted in (("channels", static_channels, spec.channels), ("size", static_size, spec.size),
                                 ("size", shape[3] if isinstance(shape[3], int) else None, spec.size)):
        if static is not None and static != wanted:
            raise GallerySourceError(
                f"ONNX gallery model {request.path} takes input of shape {shape}, which cannot take "
                f"gallery.input.{name}={wanted}: set gallery.input.{name} to {static}, or export the model with a "
                "dynamic input size"
            )
    probe = np.zeros((1, spec.channels, spec.size, spec.size), dtype=np.float32)
    try:
        output = session.run(None, {model_input.name: probe})[0]
    except Exception as error:  # noqa: BLE001
        raise GallerySourceError(f"ONNX gallery model {request.path} fails on {spec.channels}x{spec.size}x{spec.size} "
                                 f"input ({str(error)[:300]}); set gallery.input.size and channels to what it takes") from error
    fingerprint = files_fingerprint([request.path], {"source": "onnx", "input": spec.to_dict()})
    return OnnxGalleryModel(request.path, session, fingerprint, spec, int(np.asarray(output).reshape(1, -1).shape[1]))


def _providers(onnxruntime) -> list[str]:
    available = onnxruntime.get_available_providers()
    if torch.cuda.is_available() and "CUDAExecutionProvider" in available:
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def _recorded_input(session) -> dict[str, Any]:
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if not raw:
        return {}
    try:
        recorded = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return recorded if isinstance(recorded, dict) else {}


def count_onnx_flops(path: Path, input_shape: tuple[int, ...]) -> ComplexityReport:
    """Multiply-adds of one forward pass at ``input_shape``, counted on the shape-inferred graph."""
    import onnx

    model = onnx.load(str(path))
    graph_input = model.graph.input[0]
    for dim, size in zip(graph_input.type.tensor_type.shape.dim, input_shape):
        dim.ClearField("dim_param")
        dim.dim_value = size
    model = onnx.shape_inference.infer_shapes(model, data_prop=True)
    shapes = {value.name: [d.dim_value for d in value.type.tensor_type.shape.dim]
              for value in [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    initializers = {init.name: list(init.dims) for init in model.graph.initializer}
    shapes.update(initializers)
    flops, skipped = 0, Counter()
    for node in model.graph.node:
        output = shapes.get(node.output[0]) if node.output else None
        if node.op_type == "Conv" and output:
            weight = shapes.get(node.input[1])
            flops += int(np.prod(output)) * int(np.prod(weight[1:])) if weight else 0
        elif node.op_type in ("Gemm", "MatMul") and output:
            first = shapes.get(node.input[0])
            transposed = node.op_type == "Gemm" and any(a.name == "transA" and a.i for a in node.attribute)
            inner = (first[-2] if transposed else first[-1]) if first else 0
            flops += int(np.prod(output)) * int(inner)
        elif node.op_type in ("BatchNormalization", "GlobalAveragePool", "AveragePool", "ReduceMean"):
            source = shapes.get(node.input[0])
            flops += int(np.prod(source)) if source else 0
        else:
            skipped[node.op_type] += 1
    params = sum(int(np.prod(dims)) for dims in initializers.values())
    return ComplexityReport(flops=flops, params=params, input_shape=tuple(input_shape[1:]),
                            skipped_ops=dict(sorted(skipped.items())), convention=ONNX_FLOPS_CONVENTION)
