"""Exact k-nearest-neighbour search by inner product on FAISS, on a GPU when one is usable.

The metric code (retrieval.py, verification) only ever sees (scores, indices); which index or
device produced them is this module's business alone.
"""

from __future__ import annotations

import logging

import numpy as np

logger = logging.getLogger(__name__)

# FAISS GPU flat search returns at most this many neighbours per query.
GPU_MAX_K = 2048


def _import_faiss():
    try:
        import faiss
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError(
            "FAISS is not installed: install cmpnas with the 'cpu' extra (faiss-cpu) or, on a CUDA "
            "machine, the 'gpu' extra (faiss-gpu) — never both in one environment"
        ) from error
    return faiss


def faiss_gpu_count() -> int:
    """GPUs FAISS can use: 0 with faiss-cpu, or with faiss-gpu on a machine without a GPU."""
    faiss = _import_faiss()
    get_num_gpus = getattr(faiss, "get_num_gpus", None)
    return int(get_num_gpus()) if get_num_gpus is not None else 0


class FaissInnerProductKNN:
    """Exact (flat) maximum-inner-product search; cosine similarity on L2-normalised inputs.

    ``use_gpu=None`` picks the GPU when faiss-gpu sees one and falls back to the CPU otherwise;
    ``use_gpu=True`` insists and fails clearly where there is none.
    """

    def __init__(self, use_gpu: bool | None = None):
        self._faiss = _import_faiss()
        gpus = faiss_gpu_count()
        if use_gpu and gpus == 0:
            raise RuntimeError("use_gpu=True but FAISS sees no GPU (faiss-cpu installed, or no CUDA device)")
        self.use_gpu = gpus > 0 if use_gpu is None else bool(use_gpu)
        self._gpu_resources = self._faiss.StandardGpuResources() if self.use_gpu else None

    @property
    def device(self) -> str:
        return "gpu" if self.use_gpu else "cpu"

    def search(self, queries: np.ndarray, gallery: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` gallery rows of highest inner product for each query, best first."""
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        gallery = np.ascontiguousarray(gallery, dtype=np.float32)
        if queries.ndim != 2 or gallery.ndim != 2 or queries.shape[1] != gallery.shape[1]:
            raise ValueError(
                f"queries and gallery must be 2-D with the same width, got {queries.shape} and {gallery.shape}"
            )
        k = min(k, gallery.shape[0])
        index = self._faiss.IndexFlatIP(gallery.shape[1])
        if self.use_gpu and k <= GPU_MAX_K:
            index = self._faiss.index_cpu_to_gpu(self._gpu_resources, 0, index)
        index.add(gallery)
        scores, indices = index.search(queries, k)
        return scores, indices
