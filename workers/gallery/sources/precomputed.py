"""``gallery.source: embeddings``: the gallery model's embeddings, computed beforehand; no model code at all.

``gallery.path`` is a folder with ``embeddings.npy`` (float32, N x D) and ``ids.txt`` (N lines,
one image id each: the image's path relative to ``data.root``, or ``train:<i>`` / ``test:<i>``
for Fashion-MNIST; see ``workers.datasets.types.ImageSet``). ``cmpnas gallery embed`` writes
such a folder. It must cover every train, query and gallery image of the search (query images
for the paragon's own accuracy). Rows are L2-normalised on loading.

The paragon's cost cannot be measured from embeddings: give it as ``gallery.mflops``. The input
spec (``gallery.input``) describes how the embeddings were made and joins the fingerprint; it
defaults to the data's size and channels with mean 0 and std 1 when not given.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from workers.gallery.sources.base import (
    GalleryModel,
    GallerySourceError,
    GallerySourceRequest,
    check_finite,
    files_fingerprint,
    normalized_rows,
    require_file,
)
from workers.gallery.sources.registry import register_gallery_source

EMBEDDINGS_FILE = "embeddings.npy"
IDS_FILE = "ids.txt"
MAX_IDS_SHOWN = 5


class PrecomputedGallery(GalleryModel):
    source = "embeddings"

    def __init__(self, folder: Path, embeddings: np.ndarray, ids: list[str], fingerprint: str, spec):
        super().__init__(fingerprint, spec, int(embeddings.shape[1]), f"embeddings:{folder.name}")
        self.folder = folder
        self.embeddings = embeddings
        self.rows = {image_id: row for row, image_id in enumerate(ids)}

    def embed(self, images: np.ndarray, ids: Sequence[str], device: torch.device, batch_size: int = 256
              ) -> np.ndarray:
        missing = [image_id for image_id in ids if image_id not in self.rows]
        if missing:
            raise GallerySourceError(
                f"{self.folder / IDS_FILE} lacks {len(missing)} of the {len(ids)} images asked for (first: "
                f"{missing[:MAX_IDS_SHOWN]}): gallery.path must cover every train, query and gallery image of the "
                "search; embed them with `cmpnas gallery embed`, or check data.root and the ids' form"
            )
        return self.embeddings[[self.rows[image_id] for image_id in ids]]


@register_gallery_source("embeddings")
def load_precomputed_gallery(request: GallerySourceRequest) -> PrecomputedGallery:
    folder = request.path
    if not folder.is_dir():
        raise GallerySourceError(f"gallery.path={str(folder)!r} must be a folder with {EMBEDDINGS_FILE} and "
                                 f"{IDS_FILE} for gallery.source 'embeddings'")
    embeddings_file = require_file(folder / EMBEDDINGS_FILE, "gallery.path", "float32 embeddings (N x D)")
    ids_file = require_file(folder / IDS_FILE, "gallery.path", "the image ids, one per line")
    try:
        # allow_pickle=False: an object array would unpickle code.
        embeddings = np.load(embeddings_file, allow_pickle=False)
    except (ValueError, OSError) as error:
        raise GallerySourceError(f"{embeddings_file} is not a numeric .npy array ({error}); save it with "
                                 "numpy.save(path, embeddings.astype('float32'))") from error
    if embeddings.ndim != 2 or embeddings.shape[1] < 1 or not np.issubdtype(embeddings.dtype, np.floating):
        raise GallerySourceError(f"{embeddings_file} holds {embeddings.dtype} {embeddings.shape}; it must be a float "
                                 "array of shape (images, embedding dimension)")
    ids = ids_file.read_text().splitlines()
    if len(ids) != len(embeddings):
        raise GallerySourceError(f"{ids_file} has {len(ids)} ids but {embeddings_file} has {len(embeddings)} rows: "
                                 "one id per row, in the same order")
    if len(set(ids)) != len(ids):
        raise GallerySourceError(f"{ids_file} repeats ids; each image must appear once")
    check_finite(embeddings, str(embeddings_file), "recompute them with the gallery model")
    spec = request.input.resolve(size=request.data_image_size, channels=request.data_channels,
                                 mean=(0.0,) * (request.input.channels or request.data_channels),
                                 std=(1.0,) * (request.input.channels or request.data_channels), source="embeddings")
    fingerprint = files_fingerprint([embeddings_file, ids_file], {"source": "embeddings", "input": spec.to_dict()})
    return PrecomputedGallery(folder, normalized_rows(embeddings.astype(np.float32)), ids, fingerprint, spec)
