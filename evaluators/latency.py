"""Latency of a model where it is deployed: its ONNX export run by ONNX Runtime on the CPU.

The rules (one method for candidates, the paragon and the evidence benchmark):

* the model is exported the way ``cmpnas export`` exports a query model (``export_onnx``: the
  dynamo exporter, opset 18, one self-contained file, a dynamic batch dimension), so the graph
  timed is the graph shipped;
* ONNX Runtime on the CPU execution provider, ``intra_op_threads`` threads (one by default: a
  query model serves one image at a time on a small device), one inter-op thread, default graph
  optimisations (those a deployment gets);
* inputs of ``batch`` images of the model's input shape; ``warmup`` runs are discarded, then the
  median (and the 90th percentile) of ``runs`` runs, in milliseconds per call.

Figures depend on the machine and on what else runs on it: compare only latencies measured in one
process on one machine (the paragon's and the candidates' of one search are).
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

INPUT_NAME = "images"
OUTPUT_NAME = "embeddings"
LATENCY_METHOD = "ONNX Runtime CPU, median of runs after warm-up, batch 1, one intra-op thread"


@dataclass(frozen=True)
class LatencySettings:
    batch: int = 1
    intra_op_threads: int = 1
    warmup: int = 50
    runs: int = 300

    def __post_init__(self) -> None:
        for name in ("batch", "intra_op_threads", "runs"):
            if getattr(self, name) < 1:
                raise ValueError(f"LatencySettings.{name} must be at least 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"LatencySettings.warmup must be >= 0, got {self.warmup}")


@dataclass(frozen=True)
class LatencyReport:
    median_ms: float
    p90_ms: float
    settings: LatencySettings


def export_onnx(model: nn.Module, input_shape: tuple[int, ...], path: str | Path) -> Path:
    """``model`` (left untouched: a CPU copy is exported) as ONNX at ``path``, as ``cmpnas export`` ships it."""
    path = Path(path)
    exported = copy.deepcopy(model).to("cpu").eval()
    example = torch.rand(2, *input_shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(exported, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                          # By position: the module's own name for its input does not matter.
                          dynamic_shapes=({0: torch.export.Dim("batch")},), dynamo=True,
                          opset_version=18, verbose=False,
                          # One self-contained file, so a manifest's SHA-256 covers the weights too.
                          external_data=False)
    return path


def measure_onnx_latency(onnx_path: str | Path, input_shape: tuple[int, ...],
                         settings: LatencySettings = LatencySettings()) -> LatencyReport:
    """Time the ONNX model at ``onnx_path`` by the module's rules; its input is the first graph input."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = settings.intra_op_threads
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: np.random.default_rng(0).random(
        (settings.batch, *input_shape), dtype=np.float32)}
    for _ in range(settings.warmup):
        session.run(None, feed)
    timings = np.empty(settings.runs)
    for index in range(settings.runs):
        started = time.perf_counter()
        session.run(None, feed)
        timings[index] = (time.perf_counter() - started) * 1e3
    return LatencyReport(float(np.median(timings)), float(np.percentile(timings, 90)), settings)


def measure_model_latency(model: nn.Module, input_shape: tuple[int, ...],
                          settings: LatencySettings = LatencySettings()) -> LatencyReport:
    """Export ``model`` (``export_onnx``) to a temporary file and time it (``measure_onnx_latency``)."""
    with tempfile.TemporaryDirectory(prefix="cmpnas-latency-") as folder:
        path = export_onnx(model, input_shape, Path(folder) / "model.onnx")
        return measure_onnx_latency(path, input_shape, settings)
