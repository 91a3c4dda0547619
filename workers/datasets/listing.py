"""A collection of labelled image files, before any is decoded.

File sources (``image_folder``, ``manifest``) list their files first; ``workers.datasets.decoding``
then decodes them once (into memory or the shard cache) and reports the ones that are bad.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import numpy as np

from workers.datasets.types import RETRIEVAL_SPLITS

# Split folders (image_folder) and split column values (manifest) name the data's splits.
SPLIT_NAMES = RETRIEVAL_SPLITS


@dataclass(frozen=True)
class LabelledFiles:
    """Image files with labels, ids and optionally the split each belongs to.

    ``paths`` are absolute; ``ids`` name the images for good (the path relative to the
    collection's root, ``/``-separated); ``labels`` index ``class_names``; ``splits`` holds
    ``train``/``query``/``gallery`` per file when the user assigned them, else None (one pool
    that the source splits).
    """

    description: str
    paths: np.ndarray
    ids: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    splits: np.ndarray | None = None

    def __post_init__(self):
        count = len(self.paths)
        if not (len(self.ids) == len(self.labels) == count) or (self.splits is not None and len(self.splits) != count):
            raise ValueError("paths, ids, labels and splits differ in length")

    def __len__(self) -> int:
        return len(self.paths)

    def subset(self, indices: np.ndarray) -> LabelledFiles:
        return LabelledFiles(self.description, self.paths[indices], self.ids[indices], self.labels[indices],
                             self.class_names, None if self.splits is None else self.splits[indices])

    def content_key(self, *decode_settings: object) -> str:
        """SHA-256 over every file's path, size and modification time plus ``decode_settings``: what
        decides the decoded pixels, so a changed, added or removed file gives another key."""
        digest = hashlib.sha256(repr(decode_settings).encode())
        for path in self.paths.tolist():
            try:
                stat = os.stat(path)
                digest.update(f"{path}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
            except OSError:
                digest.update(f"{path}\0missing\n".encode())
        return digest.hexdigest()
