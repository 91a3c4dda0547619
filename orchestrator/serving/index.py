"""The FAISS index of an embedded gallery, and ``gallery.json``, the record that describes the folder.

An embedded gallery folder (``cmpnas gallery embed --output DIR``) holds:

- ``embeddings.npy`` and ``ids.txt``: the gallery model's L2-normalised float32 embeddings (N x D)
  and one id per row, the files of ``gallery.source: embeddings`` (``workers.gallery.sources.precomputed``);
- ``index.faiss``: the same rows in a FAISS index, row i of the index being line i of ``ids.txt``;
- ``gallery.json``: which gallery model made them (fingerprint, source, input spec), how many, and
  which index. It is written last, so a folder without it is unfinished. The index and the record
  are written durably (``workers.storage.durable_write``: a temporary of a unique name, fsynced,
  renamed over, the folder fsynced).

Rules of the index:

- The metric is always inner product (cosine on L2-normalised rows): ``faiss.index_factory(D,
  FACTORY, METRIC_INNER_PRODUCT)``. ``Flat`` is exact; ``HNSW32`` needs no training; IVF and PQ
  factories are trained on (a sample of) the embeddings and refused when there are fewer vectors
  than the factory has centroids (IVF lists, 2^bits PQ codes).
- Factories FAISS cannot parse or build for D are refused with FAISS's reason and examples.
- Search-time knobs (``nprobe``, ``efSearch``; ``orchestrator.serving.search_knobs``): ``gallery.json``
  records the default under ``"search"`` (a record without it gets the default by gallery size);
  an opened gallery may be given its own default, and each search may override it. Searches of
  one opened gallery are serialised: the knobs are set on the shared index before each search.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.serving.search_knobs import (
    EF_SEARCH,
    NPROBE,
    SearchKnobError,
    apply_search_parameters,
    checked_search_parameters,
    default_search_parameters,
)
from search_space.errors import CmpnasError
from workers.gallery.sources.precomputed import IDS_FILE
from workers.storage.durable_write import replaced_durably, write_text_durably

INDEX_FILE = "index.faiss"
GALLERY_RECORD_FILE = "gallery.json"
GALLERY_RECORD_FORMAT = "cmpnas-embedded-gallery"
GALLERY_RECORD_VERSION = 1
METRIC = "inner_product"
DEFAULT_FACTORY = "Flat"
FACTORY_EXAMPLES = "'Flat' (exact), 'HNSW32' (graph, no training), 'IVF1024,Flat' or 'IVF1024,PQ16' (trained)"
# FAISS's k-means uses at most this many points per centroid; training on more only costs time.
TRAINING_POINTS_PER_CENTROID = 256
ADD_CHUNK_ROWS = 65536
# What every gallery.json must hold: the query side reads these.
REQUIRED_RECORD_KEYS = ("fingerprint", "source", "model", "input", "embed_dim", "count", "index_factory", "metric")


class GalleryIndexError(CmpnasError, RuntimeError):
    """An index factory that cannot index these embeddings, or an embedded gallery folder that is unusable."""


def _faiss():
    from evaluators.knn import _import_faiss

    return _import_faiss()


def check_index_factory(factory: str, dim: int, count: int, search: dict[str, Any] | None = None) -> dict[str, int]:
    """Refuse, before any embedding, a factory FAISS cannot build for ``dim`` or train on ``count`` vectors,
    or search knobs it does not take; return the knobs to record (``search`` over the defaults)."""
    index = _empty_index(factory, dim)
    if not index.is_trained:
        _check_enough_vectors(index, factory, count)
    return {**default_search_parameters(index), **checked_search_parameters(index, factory, search or {})}


def build_index(vectors: np.ndarray, factory: str = DEFAULT_FACTORY, seed: int = 0):
    """A FAISS index (inner product) of ``vectors`` (N x D, L2-normalised; a memory map is fine), trained
    first where ``factory`` needs it. Rows are added in order: index row i is ``vectors[i]``."""
    count, dim = vectors.shape
    index = _empty_index(factory, dim)
    if not index.is_trained:
        needed = _check_enough_vectors(index, factory, count)
        sample = _training_sample(vectors, needed, seed)
        try:
            index.train(sample)
        except RuntimeError as error:
            raise GalleryIndexError(f"--index {factory!r} could not be trained on {len(sample)} embeddings "
                                    f"({_faiss_reason(error)}); try {FACTORY_EXAMPLES}") from None
    for start in range(0, count, ADD_CHUNK_ROWS):
        index.add(np.ascontiguousarray(vectors[start : start + ADD_CHUNK_ROWS], dtype=np.float32))
    return index


def _empty_index(factory: str, dim: int):
    faiss = _faiss()
    try:
        return faiss.index_factory(int(dim), factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as error:
        raise GalleryIndexError(f"--index {factory!r} is not a FAISS index factory for {dim}-dimensional "
                                f"embeddings ({_faiss_reason(error)}); try {FACTORY_EXAMPLES}") from None


def _check_enough_vectors(index, factory: str, count: int) -> int:
    needed = required_training_vectors(index)
    if count < needed:
        raise GalleryIndexError(
            f"--index {factory!r} has {needed} centroids to train but the gallery has only {count} embeddings; "
            f"use fewer IVF lists / PQ bits (e.g. IVF{max(1, count // 39)},Flat), or 'Flat' or 'HNSW32', which "
            "need no training"
        )
    return needed


def required_training_vectors(index) -> int:
    """The fewest vectors FAISS can train ``index`` on: its largest number of centroids (IVF lists, PQ codes)."""
    faiss = _faiss()
    needed = 1
    parts = [faiss.downcast_index(index)]
    if hasattr(parts[0], "index"):  # IndexPreTransform (PCA, OPQ) wraps the index it feeds
        parts.append(faiss.downcast_index(parts[0].index))
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        needed = max(needed, int(ivf.nlist))
        parts.append(faiss.downcast_index(ivf))
    for part in parts:
        quantizer = getattr(part, "pq", None)
        if quantizer is not None:
            needed = max(needed, int(quantizer.ksub))
    return needed


def _training_sample(vectors: np.ndarray, centroids: int, seed: int) -> np.ndarray:
    # A random sample, not the first rows: listings are sorted, so the first rows are often one class.
    limit = centroids * TRAINING_POINTS_PER_CENTROID
    if len(vectors) <= limit:
        return np.ascontiguousarray(vectors, dtype=np.float32)
    rows = np.sort(np.random.default_rng(seed).choice(len(vectors), size=limit, replace=False))
    return np.ascontiguousarray(vectors[rows], dtype=np.float32)


def _faiss_reason(error: RuntimeError) -> str:
    # FAISS prefixes its message with the C++ function and source line; the reason is at the end.
    text = str(error).strip()
    return text.split(": ", 1)[-1] if "Error" in text else text


def save_index(index, path: Path) -> None:
    """Write ``index`` to ``path`` atomically and durably (``workers.storage.durable_write``)."""
    faiss = _faiss()
    with replaced_durably(path) as temporary:
        faiss.write_index(index, str(temporary))


def load_index(path: Path):
    if not path.is_file():
        raise GalleryIndexError(f"{path} is missing; embed the gallery with `cmpnas gallery embed --output "
                                f"{path.parent}`")
    try:
        return _faiss().read_index(str(path))
    except RuntimeError as error:
        raise GalleryIndexError(f"{path} is not a readable FAISS index ({_faiss_reason(error)}); embed the "
                                "gallery again") from None


def write_gallery_record(folder: Path, record: dict[str, Any]) -> Path:
    """``folder/gallery.json``, written atomically and durably; ``record`` must hold ``REQUIRED_RECORD_KEYS``."""
    missing = [key for key in REQUIRED_RECORD_KEYS if key not in record]
    if missing:
        raise ValueError(f"a gallery record needs {missing}")
    path = folder / GALLERY_RECORD_FILE
    write_text_durably(path, json.dumps({"format": GALLERY_RECORD_FORMAT, "format_version": GALLERY_RECORD_VERSION,
                                         **record}, indent=2) + "\n")
    return path


def read_gallery_record(folder: Path) -> dict[str, Any]:
    path = Path(folder) / GALLERY_RECORD_FILE
    if not path.is_file():
        raise GalleryIndexError(f"{folder} is not an embedded gallery: {GALLERY_RECORD_FILE} is missing (it is "
                                "written last, so the embedding may be unfinished); run `cmpnas gallery embed "
                                f"--output {folder}` (again: finished shards are reused)")
    try:
        record = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise GalleryIndexError(f"{path} is corrupt ({error}); run `cmpnas gallery embed` again") from None
    missing = [key for key in REQUIRED_RECORD_KEYS if not isinstance(record, dict) or key not in record]
    if missing or record.get("format") != GALLERY_RECORD_FORMAT:
        raise GalleryIndexError(f"{path} is not a cmpnas embedded-gallery record (format {GALLERY_RECORD_FORMAT!r} "
                                f"with {list(REQUIRED_RECORD_KEYS)}; missing {missing}); run `cmpnas gallery embed`")
    return record


@dataclass(frozen=True)
class EmbeddedGallery:
    """An embedded gallery folder, opened for search: its record, FAISS index and ids (row i = ``ids[i]``),
    and the search knobs its searches use unless a search overrides them."""

    folder: Path
    record: dict[str, Any]
    index: Any
    ids: tuple[str, ...]
    search_parameters: dict[str, int] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def search(self, queries: np.ndarray, k: int, *, nprobe: int | None = None,
               ef_search: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, rows) of the ``k`` best gallery rows per query, best first; rows of -1 are no result.
        ``nprobe`` / ``ef_search``: this search's knobs (default: ``search_parameters``)."""
        parameters = {**self.search_parameters, **self.checked_knobs(nprobe, ef_search)}
        queries = np.ascontiguousarray(queries, dtype=np.float32)
        with self._lock:
            apply_search_parameters(self.index, parameters)
            return self.index.search(queries, min(k, len(self.ids)))

    def checked_knobs(self, nprobe: int | None = None, ef_search: int | None = None) -> dict[str, int]:
        """The given knobs (None: not given), refused where this index does not take them."""
        return checked_search_parameters(self.index, self.record["index_factory"],
                                         {NPROBE: nprobe, EF_SEARCH: ef_search})


def check_recorded_knobs(folder: Path, *, nprobe: int | None = None, ef_search: int | None = None) -> None:
    """Refuse ``nprobe`` / ``ef_search`` where the folder's index does not take them, judged on an empty
    index of its recorded factory: the index and its ids are not read (a 1 M gallery is gigabytes)."""
    record = read_gallery_record(Path(folder))
    empty = _empty_index(record["index_factory"], record["embed_dim"])
    checked_search_parameters(empty, record["index_factory"], {NPROBE: nprobe, EF_SEARCH: ef_search})


def open_embedded_gallery(folder: Path, *, nprobe: int | None = None, ef_search: int | None = None
                          ) -> EmbeddedGallery:
    """The folder's record, index and ids, checked to agree with each other; its searches use the
    recorded knobs (a record without them: the default by size), ``nprobe`` / ``ef_search`` over them."""
    folder = Path(folder)
    record = read_gallery_record(folder)
    index = load_index(folder / INDEX_FILE)
    ids_file = folder / IDS_FILE
    if not ids_file.is_file():
        raise GalleryIndexError(f"{ids_file} is missing; run `cmpnas gallery embed --output {folder}` again")
    ids = tuple(ids_file.read_text().splitlines())
    if not (index.ntotal == len(ids) == record["count"]) or index.d != record["embed_dim"]:
        raise GalleryIndexError(
            f"{folder} is inconsistent: {INDEX_FILE} holds {index.ntotal} vectors of {index.d} dimensions, {IDS_FILE} "
            f"{len(ids)} ids, {GALLERY_RECORD_FILE} says {record['count']} of {record['embed_dim']}; run `cmpnas "
            "gallery embed` again"
        )
    gallery = EmbeddedGallery(folder, record, index, ids)
    recorded = record.get("search", {})
    try:
        recorded = checked_search_parameters(index, record["index_factory"], dict(recorded))
    except (SearchKnobError, TypeError, ValueError) as error:
        raise GalleryIndexError(f"{folder / GALLERY_RECORD_FILE} records search knobs {recorded!r} its index cannot "
                                f"use ({error}); run `cmpnas gallery embed` again") from None
    parameters = {**default_search_parameters(index), **recorded, **gallery.checked_knobs(nprobe, ef_search)}
    return EmbeddedGallery(folder, record, index, ids, parameters)

