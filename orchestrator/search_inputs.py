"""What every job against a frozen gallery model sets up first: output folder, data, gallery, space.

A search and a supernet training both need, in this order:
1. the output folder, checked writable before any work (``prepare_output_dir``);
2. the data, decoded once (``load_data``);
3. the frozen gallery model from its source (``gallery.source``): a checkpoint checked against
   the data, one trained and saved on first use, or the team's own model or embeddings
   (``orchestrator.gallery_setup.obtain_gallery``);
4. the search space, sized by the gallery's embedding dimension and the data's channels;
5. the gallery model's embeddings of the train, query and gallery splits, computed once per job
   (``SearchInputs.embed_gallery``); after it the gallery model is moved back to the CPU, so it
   holds no accelerator memory while trials run.

Step 5 is separate so that a job can check what depends on steps 1-4 (a supernet's fit) before
spending the embedding pass.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from orchestrator.config import CmpnasConfig
from orchestrator.gallery_setup import obtain_gallery
from search_space import SearchSpace, create_space
from workers.datasets import DataRequest, RetrievalData, load_retrieval_data
from workers.gallery_embeddings import GalleryEmbeddings, compute_gallery_embeddings
from workers.gallery_sources import GalleryModel, GallerySourceError
from workers.preprocess import pick_device

Log = Callable[[str], None]


class OutputDirError(RuntimeError):
    """The output directory cannot be created or written."""


def prepare_output_dir(config: CmpnasConfig) -> Path:
    folder = Path(config.output_dir).resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".cmpnas-write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise OutputDirError(f"output_dir={config.output_dir!r} is not writable ({error}); choose another folder") from error
    return folder


def load_data(config: CmpnasConfig) -> RetrievalData:
    data = config.data
    request = DataRequest(root=data.root, download=data.download, train_size=data.train_size,
                          query_size=data.query_size, gallery_size=data.gallery_size, seed=data.seed,
                          image_size=data.image_size, channels=data.channels)
    return load_retrieval_data(data.source, request)


@dataclass
class SearchInputs:
    """Data, frozen gallery model and search space of one job; the gallery embeddings once computed."""

    data: RetrievalData
    gallery_model: GalleryModel
    space: SearchSpace
    device: torch.device
    # Seconds per set-up stage, logged on the parent run as ``stage_*_seconds``.
    timings: dict[str, float] = field(default_factory=dict)
    embeddings: GalleryEmbeddings | None = None
    # gallery.classifier: the BCT classifier built with the embeddings.
    classifier: str = "auto"

    def embed_gallery(self, log: Log) -> GalleryEmbeddings:
        """The gallery model's embeddings of every split, computed on the first call only."""
        if self.embeddings is None:
            self.embeddings = compute_gallery_embeddings(self.gallery_model, self.data, self.device, self.classifier)
            self.gallery_model.release()
            self.timings["stage_gallery_embedding_seconds"] = self.embeddings.seconds
            log(f"gallery model embedded {self.embeddings.images_embedded} images once for the whole job "
                f"({self.embeddings.seconds:.1f}s); BCT classifier: {self.embeddings.classifier_kind}")
        return self.embeddings


def prepare_search_inputs(config: CmpnasConfig, log: Log, expected_gallery_fingerprint: str | None = None
                          ) -> SearchInputs:
    """Steps 2-4 of the module's order. ``expected_gallery_fingerprint``: the gallery a resumed
    search started with; any other is refused before the embedding pass."""
    timings: dict[str, float] = {}
    started = time.perf_counter()
    data = load_data(config)
    timings["stage_data_seconds"] = time.perf_counter() - started
    log(f"data: {data.summary()}")

    device = pick_device()
    started = time.perf_counter()
    gallery_model = obtain_gallery(config, data, device, log)
    timings["stage_gallery_model_seconds"] = time.perf_counter() - started
    if expected_gallery_fingerprint and gallery_model.fingerprint != expected_gallery_fingerprint:
        raise GallerySourceError(
            f"gallery model {config.gallery_path} (fingerprint {gallery_model.fingerprint[:12]}) is not the one this "
            f"search started with ({expected_gallery_fingerprint[:12]}): candidates trained against another gallery "
            "are not comparable. Restore that model (gallery.path, gallery.input) to resume"
        )
    space = create_space(config.search_space.name, embed_dim=gallery_model.embed_dim, in_chans=data.in_chans)
    return SearchInputs(data, gallery_model, space, device, timings, classifier=config.gallery.classifier)
