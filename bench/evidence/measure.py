"""What every run of every method records about its query model, measured one way.

* held out: leave-one-out over the held-out pool, the query model embedding each query and the
  paragon the gallery (``paragon_inputs.held_out_gallery``), the query's own image left out by its
  id (``evaluators.retrieval.RetrievalEvaluator.per_query``); the per-query outcomes are kept
  (``held_out_outcomes.npz``) so the table can bootstrap over queries and pair two methods;
* cost: fvcore MFLOPs and parameters of the network at its input resolution
  (``evaluators.count_complexity``), and its ONNX export (``model.onnx``, ``evaluators.latency``:
  the graph ``cmpnas export`` ships) with a latency measured here; the table's latency ratios use
  the ``latency`` command instead, which times the paragon and every model in one invocation.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from evaluators import count_complexity
from evaluators.latency import LATENCY_METHOD, export_onnx, measure_onnx_latency
from evaluators.retrieval import RetrievalEvaluator
from workers.datasets.types import ImageSet
from workers.storage.durable_write import replaced_durably
from workers.training.preprocess import ModelInput, embed_images

OUTCOMES_FILE = "held_out_outcomes.npz"
ONNX_FILE = "model.onnx"


@dataclass(frozen=True)
class HeldOut:
    """The held-out pool, the paragon's embeddings of it, and the data's normalisation."""

    images: ImageSet
    gallery_embeddings: np.ndarray
    mean: tuple[float, ...]
    std: tuple[float, ...]


def measure_query_model(network: nn.Module, resolution: int, held_out: HeldOut, folder: Path,
                        device: torch.device) -> dict:
    """The module's figures of ``network`` (in eval mode), its outcomes and ONNX file written to ``folder``."""
    network = network.to(device).eval()
    model_input = ModelInput(held_out.mean, held_out.std, resolution, device)
    images = held_out.images
    queries = embed_images(network, images.images, model_input)
    outcomes = RetrievalEvaluator().per_query(queries, images.labels, held_out.gallery_embeddings, images.labels,
                                              (images.ids, images.ids))
    with replaced_durably(folder / OUTCOMES_FILE) as temporary, open(temporary, "wb") as handle:
        np.savez_compressed(handle, first_relevant_rank=outcomes.first_relevant_rank,
                            average_precision=outcomes.average_precision)
    input_shape = (images.images.shape[1], resolution, resolution)
    complexity = count_complexity(network.cpu(), input_shape)
    with replaced_durably(folder / ONNX_FILE) as temporary:
        export_onnx(network, input_shape, temporary)
    metrics = outcomes.metrics()
    return {"held_out_leave_one_out": {"r1": metrics.recall_at_1, "r5": metrics.recall_at_5,
                                       "map": metrics.mean_average_precision, "queries": metrics.num_queries},
            "mflops": complexity.flops / 1e6, "params": complexity.params,
            "input_shape": list(input_shape), "onnx": ONNX_FILE,
            "latency_ms": measure_onnx_latency(folder / ONNX_FILE, input_shape).median_ms,
            "latency_method": LATENCY_METHOD}


def read_outcomes(folder: Path) -> dict[str, np.ndarray]:
    with np.load(folder / OUTCOMES_FILE) as stored:
        return {name: stored[name] for name in stored.files}
