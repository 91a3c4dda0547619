"""Decoded data: images as uint8 (N, C, H, W), in memory or read on demand from the shard cache;
labels as int64."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Union

import numpy as np

if TYPE_CHECKING:
    from workers.datasets.shard_cache import ShardedImages

# What an ImageSet holds: a NumPy array, or a ``ShardedImages`` reader that slices like one.
ImageArray = Union[np.ndarray, "ShardedImages"]



@dataclass(frozen=True)
class ImageSet:
    """Images with their labels and ids.

    An id names an image for good, so that embeddings computed elsewhere (precomputed gallery
    embeddings, ``cmpnas gallery embed``) can be matched to it: the path relative to ``data.root``
    for files, ``<file split>:<index>`` for built-in sets such as Fashion-MNIST (``train:123``).
    A set built without ids numbers its images (``0``, ``1``, ...).
    """

    images: ImageArray
    labels: np.ndarray
    ids: np.ndarray | None = None

    def __post_init__(self):
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.images.dtype} {self.images.shape}")
        if len(self.images) != len(self.labels):
            raise ValueError("images and labels differ in length")
        if self.ids is None:
            object.__setattr__(self, "ids", np.array([str(index) for index in range(len(self.labels))]))
        elif len(self.ids) != len(self.labels):
            raise ValueError("ids and labels differ in length")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def streamed(self) -> bool:
        """Whether the images are read from the shard cache on demand rather than held in memory."""
        return not isinstance(self.images, np.ndarray)

    def subset(self, indices: np.ndarray) -> ImageSet:
        images = self.images.take(indices) if self.streamed else np.ascontiguousarray(self.images[indices])
        return ImageSet(images, np.ascontiguousarray(self.labels[indices]), np.asarray(self.ids)[indices])


@dataclass(frozen=True)
class BadFile:
    """A file of a collection that was skipped: its id and why."""

    id: str
    reason: str


# The splits of a RetrievalData, in the order they are logged, embedded and compared.
RETRIEVAL_SPLITS = ("train", "query", "gallery")


@dataclass(frozen=True)
class RetrievalData:
    """Train split for fine-tuning, and disjoint query/gallery splits for retrieval metrics."""

    name: str
    train: ImageSet
    query: ImageSet
    gallery: ImageSet
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    # Files of the collection that could not be decoded and were skipped.
    bad_files: tuple[BadFile, ...] = ()
    protocol: str = "closed_set"
    # data.unlabelled: images that train only through the label-free losses, labels all -1
    # (``workers.datasets.unlabelled``); never an image of query or gallery.
    unlabelled: ImageSet | None = None
    # data.unlabelled.agreement_size: pool images held back from training, on which trials measure the
    # label-free agreement (``workers.datasets.unlabelled.hold_back_for_agreement``); labels all -1.
    agreement: ImageSet | None = None

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return int(self.train.images.shape[1])

    def pair_ids(self) -> tuple[np.ndarray, np.ndarray]:
        """(query ids, gallery ids): what an evaluation needs to leave a query's own image out of its
        ranking where the two splits share images (``workers.datasets.leave_one_out``)."""
        return np.asarray(self.query.ids), np.asarray(self.gallery.ids)

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[2])

    def summary(self) -> dict[str, int | str]:
        return {
            "dataset": self.name,
            "train_images": len(self.train),
            "query_images": len(self.query),
            "gallery_images": len(self.gallery),
            "num_classes": self.num_classes,
            "image_size": self.image_size,
            "in_chans": self.in_chans,
            "protocol": self.protocol,
            "streamed": self.train.streamed,
            "bad_files": len(self.bad_files),
            "unlabelled_images": 0 if self.unlabelled is None else len(self.unlabelled),
            **({} if self.agreement is None else {"agreement_images": len(self.agreement)}),
        }


def channel_statistics(images: ImageArray, chunk: int = 1024) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, on the [0, 1] scale; read ``chunk`` images at a time
    (integer sums of values and squares, exact), so no float copy of the set is ever made."""
    channels = images.shape[1]
    total = np.zeros(channels, dtype=np.float64)
    squares = np.zeros(channels, dtype=np.float64)
    for start in range(0, len(images), chunk):
        batch = np.asarray(images[start : start + chunk])
        total += batch.sum(axis=(0, 2, 3), dtype=np.uint64)
        squares += np.einsum("nchw,nchw->c", batch, batch, dtype=np.uint64).astype(np.float64)
    count = max(1, len(images) * images.shape[2] * images.shape[3])
    mean = total / count / 255.0
    variance = np.maximum(squares / count / 255.0**2 - mean**2, 0.0)
    std = np.sqrt(variance)
    std = np.where(std > 1e-6, std, 1.0)
    return tuple(float(x) for x in mean), tuple(float(x) for x in std)


@dataclass(frozen=True)
class DataRequest:
    """What the search asks of a data source; sizes are image counts."""

    root: str | None = None
    download: bool = False
    train_size: int | None = None
    query_size: int = 2000
    gallery_size: int = 8000
    seed: int = 0
    image_size: int = 28
    # None: not chosen (``data.channels`` unset for a file collection): 1 when its images are gray,
    # refused when they are in colour (``workers.datasets.image_folder.choose_channels``).
    channels: int | None = 1
    protocol: str = "closed_set"  # or open_set: train classes disjoint from query/gallery classes
    train_classes: int | None = None  # open_set on one pool: the first N classes train (default: half)
    max_bad_fraction: float = 0.01
    streaming: bool | None = None  # None: the source's default (on for file collections)
    cache_dir: str | None = None
    decode_workers: int | None = None
    cache_trusted_group: str | None = None  # the group whose members may write the shard cache too
    allow_paths_outside_root: bool = False  # manifest: files outside the manifest's folder
    # data.unlabelled (workers.datasets.unlabelled): the pool's classes, its size cap, and whether
    # query and gallery keep those classes.
    unlabelled_classes: tuple[str, ...] = ()
    unlabelled_size: int | None = None
    unlabelled_evaluated: bool = True
