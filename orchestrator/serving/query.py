"""``cmpnas query``: images in, the nearest gallery ids out, with an exported query model and an embedded gallery.

The query side of visual search, as a service would run it:

- the query model is an export folder (``cmpnas export``): its ONNX graph, checked against the
  manifest's SHA-256s, run by ONNX Runtime (CUDA when a GPU is there, else CPU);
- the gallery is an embedded gallery folder (``cmpnas gallery embed``): its FAISS index and ids;
- the two must share a gallery model: a gallery fingerprint other than the manifest's is refused
  unless forced (the embeddings would not be comparable), and different embedding sizes are
  refused always (they cannot be compared at all);
- each image is decoded as the data loader decodes it (``decode_image``) at the manifest's input
  size and channels, and fed as pixel / 255 in float32, as the export expects; a folder stands
  for every image under it (sorted, hidden files skipped).

Results are best first, scores are inner products of L2-normalised embeddings (cosine). An
approximate index searches with its recorded knobs (``nprobe``, ``efSearch``), which the service
and each search may override (``orchestrator.serving.search_knobs``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from orchestrator.export.checks import embed_with_onnx
from orchestrator.export.package import ONNX_FILE, read_manifest
from orchestrator.serving.embed import list_image_files
from orchestrator.serving.index import EmbeddedGallery, open_embedded_gallery
from search_space.errors import CmpnasError
from workers.datasets.image_files import decode_image
from workers.storage.file_digest import file_sha256

DEFAULT_K = 5
DEFAULT_BATCH_SIZE = 256


class QueryError(CmpnasError, RuntimeError):
    """A query model and an embedded gallery that do not belong together, or no images to query."""


@dataclass(frozen=True)
class Match:
    id: str
    score: float


@dataclass(frozen=True)
class QueryResult:
    """One query image and its nearest gallery images, best first."""

    image: str
    matches: tuple[Match, ...]

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "results": [{"id": match.id, "score": match.score} for match in self.matches]}


class QueryService:
    """An export's ONNX query model and, for search, an embedded gallery, opened once, queried any number of times.

    Opened from an export folder and a gallery folder (``cmpnas query``), or from the files an MLflow model
    bundles (``from_files``: the ONNX file, the manifest and, where bundled, the gallery folder). Without a
    gallery it embeds only, and ``search`` is refused. ``nprobe`` / ``ef_search``: the gallery's search
    knobs for every search of this service (default: the gallery's recorded ones)."""

    def __init__(self, export_dir: Path, index_dir: Path | None, force: bool = False, *, nprobe: int | None = None,
                 ef_search: int | None = None):
        export_dir = Path(export_dir)
        gallery = None if index_dir is None else open_embedded_gallery(Path(index_dir), nprobe=nprobe,
                                                                        ef_search=ef_search)
        self._open(read_manifest(export_dir), export_dir / ONNX_FILE, export_dir, gallery, force)

    @classmethod
    def from_files(cls, onnx_file: Path, manifest_file: Path, index_dir: Path | None = None) -> QueryService:
        """The query model of an ONNX file checked against the manifest's SHA-256 (the rest of an export
        folder need not be there), and the gallery folder ``index_dir`` if given (never forced)."""
        onnx_file, manifest_file = Path(onnx_file), Path(manifest_file)
        manifest = json.loads(manifest_file.read_text())
        if file_sha256(onnx_file) != manifest["files"][ONNX_FILE]:
            raise QueryError(f"{onnx_file} does not match the SHA-256 of {ONNX_FILE} in {manifest_file}: the model "
                             "is corrupt; log it again")
        service = cls.__new__(cls)
        gallery = None if index_dir is None else open_embedded_gallery(Path(index_dir))
        service._open(manifest, onnx_file, manifest_file.parent, gallery, False)
        return service

    def _open(self, manifest: dict[str, Any], onnx_file: Path, export_dir: Path, gallery: EmbeddedGallery | None,
              force: bool) -> None:
        self.export_dir, self.manifest, self.gallery = export_dir, manifest, gallery
        if gallery is not None:
            check_compatible(self.manifest, gallery.record, self.export_dir, gallery.folder, force)
        wanted = self.manifest["input"]
        self.channels, self.image_size = int(wanted["channels"]), int(wanted["height"])
        self.session = _onnx_session(onnx_file)

    def query(self, image_paths: Sequence[Path | str], k: int = DEFAULT_K,
              batch_size: int = DEFAULT_BATCH_SIZE) -> list[QueryResult]:
        """The ``k`` nearest gallery ids of each image (a folder: of each image under it), in the given order."""
        if k < 1:
            raise QueryError(f"--k must be at least 1, got {k}")
        files = expand_image_paths(image_paths)
        results = []
        for start in range(0, len(files), batch_size):
            batch = files[start : start + batch_size]
            images = np.stack([decode_image(path, self.image_size, self.channels, "remove it from the query")
                               for path in batch])
            results += [QueryResult(str(path), matches) for path, matches in zip(batch, self.search(images, k))]
        return results

    def embed(self, images: np.ndarray) -> np.ndarray:
        """Embeddings of uint8 images (N, C, H, W) at the export's input size, fed pixel / 255 as the export expects."""
        return embed_with_onnx(self.session, images.astype(np.float32) / 255.0)

    def search(self, images: np.ndarray, k: int = DEFAULT_K, *, nprobe: int | None = None,
               ef_search: int | None = None) -> list[tuple[Match, ...]]:
        """The ``k`` nearest gallery ids of each uint8 image (N, C, H, W), best first; ``nprobe`` /
        ``ef_search``: this search's knobs (default: the service's)."""
        if self.gallery is None:
            raise QueryError(f"the query model {self.export_dir} was opened without a gallery, so it embeds only: "
                             "open it with an embedded gallery (`cmpnas gallery embed`) to search")
        self.gallery.checked_knobs(nprobe, ef_search)  # before the model runs: a bad knob costs nothing
        scores, rows = self.gallery.search(self.embed(images), k, nprobe=nprobe, ef_search=ef_search)
        return [tuple(Match(self.gallery.ids[row], float(score)) for score, row in zip(row_scores, row_indices)
                      if row >= 0)
                for row_scores, row_indices in zip(scores, rows)]


def query_images(export_dir: Path, index_dir: Path, image_paths: Sequence[Path | str], k: int = DEFAULT_K, *,
                 force: bool = False, knobs: dict[str, int | None] | None = None) -> list[QueryResult]:
    """``cmpnas query`` as a function: the ``k`` nearest gallery ids of each image. ``knobs``: ``nprobe``
    and/or ``ef_search`` (default: the gallery's recorded ones)."""
    return QueryService(export_dir, index_dir, force, **(knobs or {})).query(image_paths, k)


def check_compatible(manifest: dict[str, Any], record: dict[str, Any], export_dir: Path, index_dir: Path,
                     force: bool, override: str = ", or --force to query anyway") -> None:
    """Refuse a query model and a gallery that do not share the gallery model (dimensions: even with ``force``);
    ``override`` ends the refusal's fix with the caller's way round it ("" where there is none)."""
    query_dim, gallery_dim = int(manifest["embedding"]["dim"]), int(record["embed_dim"])
    if query_dim != gallery_dim:
        raise QueryError(f"the query model {export_dir} embeds into {query_dim} dimensions, the gallery {index_dir} "
                         f"into {gallery_dim}: they cannot be compared. Embed the gallery with the gallery model the "
                         "query model was searched against")
    expected = manifest["gallery"]["fingerprint"]
    if record["fingerprint"] != expected and not force:
        raise QueryError(
            f"the gallery {index_dir} was embedded by {record['model']} (fingerprint {record['fingerprint'][:12]}), "
            f"the query model {export_dir} is compatible with {manifest['gallery'].get('model')} "
            f"({expected[:12]}): its embeddings would not be comparable. Embed the gallery with that model "
            f"(`cmpnas gallery embed`){override}"
        )


def expand_image_paths(paths: Sequence[Path | str]) -> list[Path]:
    """Files as given; a folder as the image files under it, sorted, hidden ones skipped."""
    files: list[Path] = []
    for given in paths:
        path = Path(given)
        if path.is_dir():
            files += [path / relative for relative in list_image_files(path)]
        elif path.is_file():
            files.append(path)
        else:
            raise QueryError(f"{str(path)!r} is neither an image file nor a folder of images")
    if not files:
        raise QueryError(f"no images to query in {[str(path) for path in paths]}")
    return files


def _onnx_session(path: Path):
    import onnxruntime
    import torch

    cuda = torch.cuda.is_available() and "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
    return onnxruntime.InferenceSession(str(path), providers=providers)
