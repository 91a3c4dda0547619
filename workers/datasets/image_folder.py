"""User data: one subfolder per class or identity, images in any format Pillow reads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from workers.datasets.registry import register_source
from workers.datasets.splits import split_one_pool
from workers.datasets.types import DataError, DataRequest, RetrievalData

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".pgm", ".ppm"}


@register_source("image_folder")
def load_image_folder_source(request: DataRequest) -> RetrievalData:
    """Query and gallery drawn first, then the train split from what is left (all of it by default)."""
    if request.root is None:
        raise DataError("data.root is required for data.source 'image_folder': the folder of class subfolders")
    images, labels, class_names, ids = load_image_folder(request.root, request.image_size, request.channels)
    return split_one_pool(f"image_folder:{request.root}", f"image folder {request.root}", images, labels,
                          class_names, request, ids)


def load_image_folder(root: str | Path, image_size: int, channels: int
                      ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...], np.ndarray]:
    """Decode every image once, resized to ``image_size`` square, as uint8 (N, C, H, W); with labels,
    class names and ids (each image's path relative to ``root``, with ``/`` separators)."""
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"data.root={str(root)!r} is not a folder; give a folder with one subfolder per class")
    if channels not in (1, 3):
        raise DataError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    class_dirs = sorted(path for path in root.iterdir() if path.is_dir() and not path.name.startswith("."))
    images, labels, class_names, ids = [], [], [], []
    for class_dir in class_dirs:
        files = sorted(p for p in class_dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            continue
        label = len(class_names)
        class_names.append(class_dir.name)
        for file in files:
            images.append(decode_image(file, image_size, channels, "remove or replace it"))
            labels.append(label)
            ids.append(file.relative_to(root).as_posix())
    if not images:
        raise DataError(
            f"data.root={str(root)!r} holds no images in class subfolders "
            f"(expected ROOT/<class>/<image> with suffixes {sorted(IMAGE_SUFFIXES)})"
        )
    return np.stack(images), np.array(labels, dtype=np.int64), tuple(class_names), np.array(ids)


def decode_image(file: Path, image_size: int, channels: int, fix: str) -> np.ndarray:
    """One image as uint8 (C, H, W), resized whole to ``image_size`` square; ``fix`` ends the error."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            decoded = image.convert("L" if channels == 1 else "RGB").resize((image_size, image_size),
                                                                            Image.Resampling.BILINEAR)
    except (UnidentifiedImageError, OSError) as error:
        raise DataError(f"{file} could not be decoded as an image ({error}); {fix}") from error
    array = np.asarray(decoded, dtype=np.uint8)
    return array[None] if channels == 1 else array.transpose(2, 0, 1)
