"""The collections ``cmpnas gallery embed`` embeds: an image folder or the configured data's splits.

- **Collections.** An image folder (``folder_collection``): every image file under it,
  recursively, in sorted order, hidden files and folders (``.*``, macOS ``._*`` included) skipped.
  An image's id is its path relative to the folder with ``/`` separators, which is the data
  loader's id when the folder is ``data.root``. Images are decoded as the data loader decodes
  them (``decode_image``), at the gallery model's input size and channels. Or the configured
  data's splits (``data_collection``): ids and images exactly as the search saw them, so the
  search's gallery embeddings are reproduced.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from orchestrator.serving.embed.errors import GalleryEmbedError
from workers.datasets import RETRIEVAL_SPLITS, RetrievalData
from workers.datasets.image_files import IMAGE_SUFFIXES, decode_image, image_files_under
from workers.datasets.shard_cache import ShardedImages
from workers.datasets.types import ImageArray
from workers.gallery.sources import GalleryInputSpec

# The splits `cmpnas gallery embed --split` may name: those of the search's data.
SPLITS = RETRIEVAL_SPLITS


class ImageCollection(ABC):
    """Images to embed, in a fixed order, each with an id; read a slice at a time."""

    ids: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    @abstractmethod
    def description(self) -> str:
        """What the collection is, for logs and ``gallery.json``."""

    @abstractmethod
    def read(self, start: int, stop: int, spec: GalleryInputSpec) -> np.ndarray:
        """uint8 images (N, C, H, W) ``start`` to ``stop`` of the listing, for a model taking ``spec``."""

    def listing_digest(self) -> str:
        """SHA-256 of what decides the shards' contents: the ids in order (and file sizes, for files)."""
        return hashlib.sha256("\n".join(self.ids).encode()).hexdigest()


@dataclass(frozen=True)
class ImageFolderCollection(ImageCollection):
    """Image files under ``root``; ``ids`` are their paths relative to it, ``sizes`` their sizes in bytes
    and ``mtimes_ns`` their modification times."""

    root: Path
    ids: tuple[str, ...]
    sizes: tuple[int, ...]
    mtimes_ns: tuple[int, ...] = ()

    @property
    def description(self) -> str:
        return f"image folder {self.root}"

    def read(self, start: int, stop: int, spec: GalleryInputSpec) -> np.ndarray:
        fix = "remove or replace it, then run again (finished shards are kept)"
        return np.stack([decode_image(self.root / image_id, spec.size, spec.channels, fix)
                         for image_id in self.ids[start:stop]])

    def listing_digest(self) -> str:
        # A file replaced under the same name changes the embedding: its size and modification time
        # join the listing (as make and rsync tell a changed file; hashing every image would read
        # the whole collection on each run).
        times = self.mtimes_ns or (0,) * len(self.ids)
        listed = "\n".join(f"{image_id}\t{size}\t{mtime}" for image_id, size, mtime in zip(self.ids, self.sizes, times))
        return hashlib.sha256(listed.encode()).hexdigest()


@dataclass(frozen=True)
class ImageArrayCollection(ImageCollection):
    """Images already decoded (the data's splits): uint8 (N, C, H, W), in memory or in the shard cache,
    with one id each."""

    ids: tuple[str, ...]
    images: ImageArray
    name: str

    @property
    def description(self) -> str:
        return self.name

    def read(self, start: int, stop: int, spec: GalleryInputSpec) -> np.ndarray:
        # As the search embedded them: the gallery model's input spec resizes and adapts channels.
        return self.images[start:stop]


def list_image_files(folder: Path) -> list[str]:
    """Paths (relative to ``folder``, ``/``-separated, sorted) of the image files under it, hidden ones skipped."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        raise GalleryEmbedError(f"--images {str(folder)!r} is not a folder; give the folder of the images to embed")
    return sorted(path.relative_to(root).as_posix() for path in image_files_under(root, root))


def folder_collection(folder: Path) -> ImageFolderCollection:
    root = Path(folder).expanduser().resolve()
    ids = list_image_files(root)
    if not ids:
        raise GalleryEmbedError(f"--images {str(folder)!r} holds no image files (suffixes {sorted(IMAGE_SUFFIXES)}, "
                                "hidden files and folders skipped)")
    stats = [(root / image_id).stat() for image_id in ids]
    return ImageFolderCollection(root, tuple(ids), tuple(stat.st_size for stat in stats),
                                 tuple(stat.st_mtime_ns for stat in stats))


def data_collection(data: RetrievalData, splits: Sequence[str] = SPLITS) -> ImageArrayCollection:
    """The data's ``splits`` (train, query, gallery), in that order, with the loader's ids."""
    unknown = [split for split in splits if split not in SPLITS]
    if unknown or not splits:
        raise GalleryEmbedError(f"--split {unknown or list(splits)} is not one of {list(SPLITS)}; give one or more")
    chosen = [split for split in SPLITS if split in splits]
    sets = [getattr(data, split) for split in chosen]
    ids = tuple(str(image_id) for image_set in sets for image_id in image_set.ids)
    if len(set(ids)) != len(ids):
        raise GalleryEmbedError(f"the splits {chosen} of {data.name} share image ids; an embedded gallery needs "
                                "each image once: embed fewer splits (--split)")
    # A streamed collection stays on disk: the splits are views of one shard cache, read by shard.
    images = ShardedImages.concatenate([image_set.images for image_set in sets]) if sets[0].streamed else \
        np.concatenate([image_set.images for image_set in sets])
    return ImageArrayCollection(ids, images, f"{data.name} ({' + '.join(chosen)} splits)")
