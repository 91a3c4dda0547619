"""Reusing a gallery checkpoint: refused when it was made for other data or another split."""

import pytest

from orchestrator.config import validate_config
from orchestrator.setup.gallery import check_gallery_fits, split_identity
from workers.datasets import DataRequest, load_retrieval_data
from workers.gallery.model import GalleryArchitecture, GalleryCheckpoint, GalleryEmbeddingNet
from workers.storage.checkpoint import CheckpointError


def _folder(root):
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        for index in range(12):
            Image.fromarray(rng.integers(0, 255, (28, 28), dtype=np.uint8)).save(root / name / f"{index}.png")
    return root


def test_a_checkpoint_from_another_split_of_the_same_image_folder_is_refused(tmp_path):
    root = _folder(tmp_path / "images")
    tree = {"data": {"source": "image_folder", "root": str(root), "train_size": None, "query_size": 4,
                     "gallery_size": 8}, "gallery": {"backbone": "resnet10t", "embed_dim": 32}}
    config = validate_config(tree)
    data = load_retrieval_data("image_folder", DataRequest(root=str(root), query_size=4, gallery_size=8))
    model = GalleryEmbeddingNet(GalleryArchitecture("resnet10t", 32, 2, 1, 28))
    info = {"dataset": data.name, "class_names": list(data.class_names), "split": split_identity(config)}
    check_gallery_fits(GalleryCheckpoint(model, "f", (0.5,), (0.25,), info), config, data, tmp_path / "g")
    reseeded = validate_config({**tree, "data": {**tree["data"], "seed": 1}})
    with pytest.raises(CheckpointError, match="another split of this data"):
        check_gallery_fits(GalleryCheckpoint(model, "f", (0.5,), (0.25,), info), reseeded, data, tmp_path / "g")
    other = {**info, "dataset": "fashion_mnist"}
    with pytest.raises(CheckpointError, match="it was trained on 'fashion_mnist'"):
        check_gallery_fits(GalleryCheckpoint(model, "f", (0.5,), (0.25,), other), config, data, tmp_path / "g")


def test_a_closed_set_checkpoint_is_refused_for_an_open_set_search(tmp_path):
    import numpy as np

    from workers.datasets import ImageSet, RetrievalData
    from workers.datasets.fashion_mnist import CLASS_NAMES

    sizes = {"query_size": 1000, "gallery_size": 4000}
    closed = validate_config({"data": sizes, "gallery": {"backbone": "resnet10t", "embed_dim": 32}})
    opened = validate_config({"data": {**sizes, "protocol": "open_set"},
                              "gallery": {"backbone": "resnet10t", "embed_dim": 32}})
    images = ImageSet(np.zeros((2, 1, 28, 28), np.uint8), np.array([0, 5]))
    data = RetrievalData("fashion_mnist", images, images, images, CLASS_NAMES, (0.5,), (0.25,))
    model = GalleryEmbeddingNet(GalleryArchitecture("resnet10t", 32, 10, 1, 28))
    info = {"dataset": data.name, "class_names": list(data.class_names), "split": split_identity(closed)}
    check_gallery_fits(GalleryCheckpoint(model, "f", (0.5,), (0.25,), info), closed, data, tmp_path / "g")
    # Trained closed-set, the model has seen the classes an open-set search holds out.
    with pytest.raises(CheckpointError, match="another split of this data"):
        check_gallery_fits(GalleryCheckpoint(model, "f", (0.5,), (0.25,), info), opened, data, tmp_path / "g")
