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
        """The ``k`` gallery rows of highest inner product for each query, best first.

        Builds an index for this one call; to search one gallery many times, ``build_index`` once.
        """
        return self.build_index(gallery).search(queries, k)

    def build_index(self, gallery: np.ndarray) -> GalleryIndex:
        """An index over a copy of ``gallery`` (later changes to the array do not reach it)."""
        gallery = np.ascontiguousarray(gallery, dtype=np.float32)
        if gallery.ndim != 2:
            raise ValueError(f"the gallery must be 2-D (rows x width), got shape {gallery.shape}")
        index = self._faiss.IndexFlatIP(gallery.shape[1])
        index.add(gallery)
        return GalleryIndex(self, index, gallery.shape[0], gallery.shape[1])


class GalleryIndex:
    """One gallery, indexed once, searched by any number of query batches."""

    def __init__(self, backend: FaissInnerProductKNN, cpu_index, rows: int, width: int):
        self._backend = backend
        self._cpu_index = cpu_index
        self._gpu_index = None
        self._vectors: np.ndarray | None = None
        self.rows = rows
        self.width = width

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` gallery rows of highest inner product for each query, best first."""
        queries = self._checked(queries)
        k = min(k, self.rows)
        if k == self.rows:
            return self._rank_all(queries)
        return self._index_for(k).search(queries, k)

    def scores(self, queries: np.ndarray) -> np.ndarray:
        """Inner products of every query with every gallery row, in gallery order.

        For metrics over the whole gallery, which need no neighbour search: one matrix product
        on the CPU (the gallery rows are copied out of the index on first use).
        """
        queries = self._checked(queries)
        if self._vectors is None:
            self._vectors = self._cpu_index.reconstruct_n(0, self.rows)
        return queries @ self._vectors.T

    def _rank_all(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The whole gallery in order for each query.

        A full ranking is a sort, not a k-selection: FAISS's flat search keeps a k-heap per query,
        which for k = the whole gallery is slower than one matrix product and a sort. Equal
        scores keep gallery order.
        """
        scores = self.scores(queries)
        order = np.argsort(-scores, axis=1, kind="stable")
        return np.take_along_axis(scores, order, axis=1), order

    def _checked(self, queries: np.ndarray) -> np.ndarray:
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.width:
            raise ValueError(
                f"queries and gallery must be 2-D with the same width, got {queries.shape} and "
                f"{(self.rows, self.width)}"
            )
        return queries

    def _index_for(self, k: int):
        # The GPU flat index serves k up to GPU_MAX_K; larger k stay on the CPU.
        backend = self._backend
        if not backend.use_gpu or k > GPU_MAX_K:
            return self._cpu_index
        if self._gpu_index is None:
            self._gpu_index = backend._faiss.index_cpu_to_gpu(backend._gpu_resources, 0, self._cpu_index)
        return self._gpu_index
