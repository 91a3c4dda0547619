"""Decoded data held in memory: images as uint8 arrays (N, C, H, W), labels as int64."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class DataError(RuntimeError):
    """A data set that is missing, truncated, unreadable or unsuitable; the message says the fix."""


@dataclass(frozen=True)
class ImageSet:
    """Images with their labels and ids.

    An id names an image for good, so that embeddings computed elsewhere (precomputed gallery
    embeddings, ``cmpnas gallery embed``) can be matched to it: the path relative to ``data.root``
    for files, ``<file split>:<index>`` for built-in sets such as Fashion-MNIST (``train:123``).
    A set built without ids numbers its images (``0``, ``1``, ...).
    """

    images: np.ndarray
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

    def subset(self, indices: np.ndarray) -> ImageSet:
        return ImageSet(np.ascontiguousarray(self.images[indices]), np.ascontiguousarray(self.labels[indices]),
                        np.asarray(self.ids)[indices])


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

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_chans(self) -> int:
        return int(self.train.images.shape[1])

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
        }


def channel_statistics(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 images, on the [0, 1] scale."""
    scaled = images.astype(np.float64) / 255.0
    mean = scaled.mean(axis=(0, 2, 3))
    std = scaled.std(axis=(0, 2, 3))
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
    channels: int = 1
