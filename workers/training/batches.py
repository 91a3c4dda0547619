"""The train split as ``fit`` reads it: one batch at a time, by index, never the whole set at once.

``ImageBatches`` reads uint8 images from memory or the shard cache (``ShardedImages``), moves them
to the device and, with augmentation on, returns a random resized crop (with a horizontal flip
by chance) of each image at the stored size, or (``pad_padding`` > 0) a random crop of the image
zero-padded by that many pixels on each side, the standard recipe for small images such as
Fashion-MNIST and CIFAR (nothing rescaled). The crop of every image depends only on the seed,
the step and the image's place in the batch, so a resumed training draws the same crops as an
uninterrupted one, and streamed and in-memory data give the same batches.

``PooledBatches`` appends a batch of the unlabelled pool (``data.unlabelled``) to every labelled
batch: ``unlabelled_batch_size`` pool images per step, the pool's rows after the labelled ones. The
pool is read in passes, each in the order of its own seeded permutation (pass ``p`` of seed ``s``:
``default_rng([s, p])``), so which pool images a step reads depends only on the seed and the step:
a resumed training reads the same ones. An epoch is still one pass over the labelled split; the
pool is cycled independently of it (smaller pools repeat sooner, larger ones take several epochs).

The caller turns a batch into model input (``workers.training.preprocess.to_model_input``) at the
resolution its model needs, and gives the same uint8 view to the gallery model when its
targets must follow the crop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from workers.datasets.types import ImageArray
from workers.datasets.unlabelled import UNLABELLED


@dataclass(frozen=True)
class AugmentationSettings:
    """Random resized crop (area fraction ``crop_scale``, aspect ratio ``crop_ratio``), or with
    ``pad_padding`` > 0 a random crop of the zero-padded image instead; and the horizontal flip."""

    crop_scale: tuple[float, float] = (0.35, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    horizontal_flip: bool = True
    pad_padding: int = 0

    def __post_init__(self) -> None:
        if self.pad_padding < 0:
            raise ValueError(f"pad_padding must be >= 0 pixels, got {self.pad_padding}")


class ImageBatches:
    """uint8 image batches (B, C, H, W) on ``device``, augmented when ``augmentation`` is given."""

    def __init__(self, images: ImageArray, labels: np.ndarray, device: torch.device,
                 augmentation: AugmentationSettings | None = None, seed: int = 0):
        self.images = images
        self.labels = torch.as_tensor(np.asarray(labels), device=device)
        self.device = device
        self.augmentation = augmentation
        self.seed = seed

    def read(self, index: torch.Tensor, step: int) -> torch.Tensor:
        rows = index.cpu().numpy()
        batch = torch.from_numpy(np.ascontiguousarray(self.images[rows]))
        if self.augmentation is not None:
            batch = augment(batch, self.augmentation, np.random.default_rng([self.seed, step]))
        return batch.to(self.device, non_blocking=True)


def augment(batch: torch.Tensor, settings: AugmentationSettings, rng: np.random.Generator) -> torch.Tensor:
    """A random crop of each uint8 image (resized, or of the padded image: see the settings), back at
    its own size, flipped with probability 1/2."""
    from torchvision.transforms.v2 import functional as TF

    height, width = batch.shape[-2:]
    out = torch.empty_like(batch)
    pad = settings.pad_padding
    for position, image in enumerate(batch):
        if pad:
            top, left = (int(offset) for offset in rng.integers(0, 2 * pad + 1, size=2))
            view = TF.pad(image, [pad])[:, top : top + height, left : left + width]
        else:
            top, left, crop_height, crop_width = crop_box(height, width, settings, rng)
            view = TF.resized_crop(image, top, left, crop_height, crop_width, [height, width], antialias=True)
        if settings.horizontal_flip and rng.random() < 0.5:
            view = view.flip(-1)
        out[position] = view
    return out


def crop_box(height: int, width: int, settings: AugmentationSettings, rng: np.random.Generator
             ) -> tuple[int, int, int, int]:
    """(top, left, height, width) of a crop with area and aspect ratio drawn from the settings'
    ranges (aspect ratio log-uniform); after 10 draws that do not fit, the centred largest crop."""
    area = height * width
    log_ratio = (math.log(settings.crop_ratio[0]), math.log(settings.crop_ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*settings.crop_scale)
        ratio = math.exp(rng.uniform(*log_ratio))
        crop_width = int(round(math.sqrt(target * ratio)))
        crop_height = int(round(math.sqrt(target / ratio)))
        if 0 < crop_width <= width and 0 < crop_height <= height:
            top = int(rng.integers(0, height - crop_height + 1))
            left = int(rng.integers(0, width - crop_width + 1))
            return top, left, crop_height, crop_width
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


class PooledBatches:
    """Labelled batches with a batch of the unlabelled pool appended at each step (module rules); a
    ``BatchReader`` whose ``labels`` are the labelled split's then the pool's (all ``UNLABELLED``)."""

    def __init__(self, labelled: ImageBatches, pool_images: ImageArray, pool_batch_size: int):
        self.labelled = labelled
        self.pool = ImageBatches(pool_images, np.full(len(pool_images), UNLABELLED, dtype=np.int64), labelled.device,
                                 labelled.augmentation, labelled.seed + 1)
        self.epoch_rows = len(labelled.labels)
        self.pool_batch_size = max(1, min(pool_batch_size, len(pool_images)))
        self.labels = torch.cat([labelled.labels, self.pool.labels])

    def pool_rows(self, step: int) -> np.ndarray:
        """The pool images step ``step`` reads (module rules)."""
        size = len(self.pool.labels)
        positions = step * self.pool_batch_size + np.arange(self.pool_batch_size)
        rows = np.empty(len(positions), dtype=np.int64)
        for number in np.unique(positions // size):
            in_pass = positions // size == number
            rows[in_pass] = np.random.default_rng([self.labelled.seed, int(number)]).permutation(size)[
                positions[in_pass] % size]
        return rows

    def batch_rows(self, index: torch.Tensor, step: int) -> torch.Tensor:
        pool = torch.as_tensor(self.epoch_rows + self.pool_rows(step), dtype=index.dtype)
        return torch.cat([index, pool.to(index.device)])

    def read(self, rows: torch.Tensor, step: int) -> torch.Tensor:
        is_pool = rows >= self.epoch_rows
        return torch.cat([self.labelled.read(rows[~is_pool], step), self.pool.read(rows[is_pool] - self.epoch_rows, step)])
