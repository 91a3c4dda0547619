"""Tiny real inputs for the serving tests: an image folder, an untrained cmpnas gallery checkpoint, an export.

Everything is small enough to build per test module in seconds on a CPU: 4 classes x 12 gray
16x16 PNGs, a resnet10t gallery model with 16-dimensional embeddings, and a query-model export
whose network *is* the gallery model, so that each gallery image's nearest neighbour is itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

CLASSES = ("circle", "cross", "stripes", "square")
IMAGES_PER_CLASS = 12
IMAGE_SIZE = 16
EMBED_DIM = 16
MEAN, STD = (0.5,), (0.25,)


def write_image_folder(root: Path, classes=CLASSES, per_class: int = IMAGES_PER_CLASS, seed: int = 0) -> Path:
    """``root/<class>/<index>.png``: one pattern per class, each image with its own noise and offset."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            dy, dx = rng.integers(-3, 4, size=2)
            cy, cx = y - 8 - dy, x - 8 - dx
            pattern = [np.hypot(cy, cx) < 5, (abs(cy) < 2) | (abs(cx) < 2), (y + index) % 4 < 2,
                       (abs(cy) < 5) & (abs(cx) < 5)][label % 4]
            image = np.clip(pattern * 200.0 + rng.normal(30, 25, pattern.shape), 0, 255).astype(np.uint8)
            Image.fromarray(image).save(root / name / f"{index:03d}.png")
    return root


def save_tiny_gallery(path: Path, seed: int = 0, num_classes: int = len(CLASSES)) -> Path:
    """An untrained (seeded) cmpnas gallery checkpoint: resnet10t, D=16, 1-channel 16x16 input."""
    import torch

    from workers.gallery.model import GalleryArchitecture, GalleryEmbeddingNet, save_gallery

    torch.manual_seed(seed)
    model = GalleryEmbeddingNet(GalleryArchitecture("resnet10t", EMBED_DIM, num_classes, 1, IMAGE_SIZE))
    save_gallery(path, model, MEAN, STD, {"dataset": "tiny", "class_names": list(CLASSES)})
    return path


def open_tiny_gallery(path: Path):
    from workers.gallery.sources import GallerySourceRequest, InputSpecRequest, load_gallery_model

    return load_gallery_model("cmpnas", GallerySourceRequest(path=path, input=InputSpecRequest(), data_channels=1,
                                                             data_image_size=IMAGE_SIZE))


def write_query_export(folder: Path, gallery_checkpoint: Path) -> Path:
    """An export folder as ``cmpnas export`` writes it (formats from ``write_formats``), whose query network
    is the gallery model itself; the manifest holds the keys the serving side reads."""
    from orchestrator.export.package import (
        MANIFEST_FILE,
        ONNX_FILE,
        TORCHSCRIPT_FILE,
        WEIGHTS_FILE,
        DeployableQueryModel,
        write_formats,
    )
    from workers.storage.file_digest import file_sha256

    gallery = open_tiny_gallery(gallery_checkpoint)
    folder.mkdir(parents=True, exist_ok=True)
    network = gallery.checkpoint.model
    model = DeployableQueryModel(network, MEAN, STD, IMAGE_SIZE).eval()
    write_formats(model, folder, (1, IMAGE_SIZE, IMAGE_SIZE))
    manifest = {
        "gallery": gallery.identity(),
        "embedding": {"dim": EMBED_DIM, "normalization": "l2", "similarity": "inner product (cosine)"},
        "input": {"layout": "NCHW", "dtype": "float32", "channels": 1, "height": IMAGE_SIZE, "width": IMAGE_SIZE,
                  "scale": "pixel / 255 (values in [0, 1])", "mean": list(MEAN), "std": list(STD),
                  "model_resolution": IMAGE_SIZE},
        "files": {name: file_sha256(folder / name) for name in (ONNX_FILE, TORCHSCRIPT_FILE, WEIGHTS_FILE)},
    }
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2))
    return folder


def image_folder_config_tree(root: Path, gallery_checkpoint: Path, output_dir: Path) -> dict:
    """A config over the tiny image folder and gallery checkpoint (for the CLI)."""
    return {
        "data": {"source": "image_folder", "root": str(root), "image_size": IMAGE_SIZE, "channels": 1,
                 "train_size": None, "query_size": 8, "gallery_size": 16, "seed": 0},
        "gallery": {"checkpoint": str(gallery_checkpoint), "backbone": "resnet10t", "embed_dim": EMBED_DIM},
        "output_dir": str(output_dir),
    }


# Module-scoped fixtures of the serving tests: import them by name into a test module to use them.
@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    """A fresh image folder (``write_image_folder``) per test module."""
    return write_image_folder(tmp_path_factory.mktemp("serving") / "images")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny untrained cmpnas gallery checkpoint (``save_tiny_gallery``) per test module."""
    return save_tiny_gallery(tmp_path_factory.mktemp("gallery") / "gallery.safetensors")
