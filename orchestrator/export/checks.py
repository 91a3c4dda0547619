"""Checks an export must pass before anything is recorded: format parity and recorded accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from evaluators import RetrievalEvaluator, RetrievalMetrics
from orchestrator.export.errors import ExportError
from orchestrator.export.package import ONNX_FILE, TORCHSCRIPT_FILE
from workers.datasets import RetrievalData
from workers.datasets.types import ImageArray
from workers.gallery.sources import GalleryModel

PARITY_TOLERANCE = 1e-4


def onnx_session(folder: Path):
    import onnxruntime

    return onnxruntime.InferenceSession(str(folder / ONNX_FILE), providers=["CPUExecutionProvider"])


def embed_with_onnx(session, images01: np.ndarray, batch_size: int = 512) -> np.ndarray:
    chunks = [session.run(None, {"images": np.ascontiguousarray(images01[i : i + batch_size], dtype=np.float32)})[0]
              for i in range(0, len(images01), batch_size)]
    return np.concatenate(chunks)


def embed_uint8_with_onnx(session, images: ImageArray, batch_size: int = 512) -> np.ndarray:
    """``embed_with_onnx`` of uint8 images fed pixel / 255, read and scaled one batch at a time (a
    streamed split is never held whole)."""
    chunks = [embed_with_onnx(session, np.asarray(images[i : i + batch_size], dtype=np.float32) / 255.0, batch_size)
              for i in range(0, len(images), batch_size)]
    return np.concatenate(chunks)


def check_parity(model: torch.nn.Module, folder: Path, input_shape: tuple[int, int, int], seed: int = 0) -> dict:
    """Max |difference| of ONNX Runtime and TorchScript embeddings from PyTorch's on fresh inputs."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(6, *input_shape, generator=generator)
    with torch.inference_mode():
        reference = model(images).numpy()
        scripted = torch.jit.load(str(folder / TORCHSCRIPT_FILE))(images).numpy()
    differences = {
        "onnxruntime": float(np.abs(embed_with_onnx(onnx_session(folder), images.numpy()) - reference).max()),
        "torchscript": float(np.abs(scripted - reference).max()),
    }
    for runtime, difference in differences.items():
        if not difference <= PARITY_TOLERANCE:
            raise ExportError(f"{runtime} embeddings differ from PyTorch by {difference:.2e} "
                              f"(> {PARITY_TOLERANCE:g}); the export is not faithful")
    return differences


def embed_gallery_split(gallery: GalleryModel, data: RetrievalData) -> np.ndarray:
    """The gallery model's embeddings of the gallery split: what the exported query model is searched against."""
    return gallery.embed(data.gallery.images, [str(i) for i in data.gallery.ids], torch.device("cpu"))


def cross_model_metrics(session, data: RetrievalData, gallery_embeddings: np.ndarray) -> RetrievalMetrics:
    """The ONNX query model on the query split (fed pixel / 255, as a consumer would) against the gallery."""
    queries = embed_uint8_with_onnx(session, data.query.images)
    return RetrievalEvaluator().evaluate(queries, data.query.labels, gallery_embeddings, data.gallery.labels,
                                         data.pair_ids())


def check_recorded_recall(measured: RetrievalMetrics, recorded_r1: float, what: str) -> None:
    """Equal up to one query changing its nearest neighbour through float rounding."""
    tolerance = 100.0 / measured.num_queries + 1e-9
    if abs(measured.recall_at_1 - recorded_r1) > tolerance:
        raise ExportError(f"{what}: cross-model R@1 {measured.recall_at_1:.2f} differs from the recorded "
                          f"{recorded_r1:.2f} by more than one query ({tolerance:.3f} points)")
