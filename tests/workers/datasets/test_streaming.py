"""The shard cache and streamed training: same pixels, same batches and same metrics as in memory,
bad files counted and skipped, memory never holding the collection."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from evaluators import create_task
from search_space import ArchSpec, build_query_model, create_space
from workers.compatibility.candidate import fine_tune_candidate
from workers.compatibility.training import CompatibilityTrainingSettings, TrainingRun
from workers.datasets import DataError, DataRequest, image_files, load_retrieval_data
from workers.datasets.shard_cache import ShardedImages
from workers.gallery.embeddings import compute_gallery_embeddings
from workers.gallery.sources import GalleryInputSpec
from workers.gallery.sources.torch_model import NormalizedEmbedding, TorchGalleryModel
from workers.training.batches import AugmentationSettings, ImageBatches, crop_box
from workers.training.fit import OptimSettings
from workers.training.preprocess import ModelInput, embed_images

CLASSES, PER_CLASS, SIZE = 4, 60, 28


def write_collection(root, corrupt: int = 0, seed: int = 0):
    """Colour images of CLASSES classes (a tint per class plus noise), of varied sizes, as PNG and JPEG."""
    rng = np.random.default_rng(seed)
    for label in range(CLASSES):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        tint = rng.integers(0, 256, 3)
        for index in range(PER_CLASS):
            height, width = rng.integers(30, 60, 2)
            pixels = (rng.normal(0, 35, (height, width, 3)) + tint).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.{'png' if index % 2 else 'jpg'}")
    for index in range(corrupt):
        (root / "class_0" / f"corrupt_{index}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (root / "class_1" / "._resource_fork.png").write_bytes(b"macOS metadata")
    (root / ".thumbnails").mkdir()
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(root / ".thumbnails" / "x.png")
    return root


def request(root, cache, streaming: bool, **overrides) -> DataRequest:
    fields = dict(root=str(root), query_size=40, gallery_size=80, image_size=SIZE, channels=3, streaming=streaming,
                  cache_dir=str(cache), seed=0)
    return DataRequest(**{**fields, **overrides})


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    return write_collection(tmp_path_factory.mktemp("photos") / "images", corrupt=1)


def test_streamed_and_in_memory_data_hold_the_same_images_splits_and_statistics(collection, tmp_path):
    streamed = load_retrieval_data("image_folder", request(collection, tmp_path / "cache", True))
    in_memory = load_retrieval_data("image_folder", request(collection, tmp_path / "cache", False))
    assert streamed.train.streamed and not in_memory.train.streamed
    for split in ("train", "query", "gallery"):
        a, b = getattr(streamed, split), getattr(in_memory, split)
        assert isinstance(a.images, ShardedImages)
        np.testing.assert_array_equal(np.asarray(a.images), b.images)
        np.testing.assert_array_equal(a.labels, b.labels)
        assert list(a.ids) == list(b.ids)
    assert streamed.mean == pytest.approx(in_memory.mean) and streamed.std == pytest.approx(in_memory.std)
    # Hidden files and folders are not images; the corrupt file is skipped and reported, in both paths.
    assert not any("resource_fork" in i or "thumbnails" in i for i in streamed.train.ids)
    assert [bad.id for bad in streamed.bad_files] == [bad.id for bad in in_memory.bad_files] == ["class_0/corrupt_0.jpg"]
    assert len(streamed.train) + len(streamed.query) + len(streamed.gallery) == CLASSES * PER_CLASS


def test_the_cache_is_built_once_and_rebuilt_where_it_is_missing(collection, tmp_path):
    cache = tmp_path / "cache"
    first = load_retrieval_data("image_folder", request(collection, cache, True))
    folders = [path for path in cache.iterdir() if path.is_dir()]
    assert len(folders) == 1
    stamp = {path.name: path.stat().st_mtime_ns for path in folders[0].iterdir()}
    again = load_retrieval_data("image_folder", request(collection, cache, True))
    assert {path.name: path.stat().st_mtime_ns for path in folders[0].iterdir()} == stamp  # reused, not rewritten
    # A reader that travels to a node without the cache (here: the cache deleted) rebuilds it there.
    travelled = pickle.loads(pickle.dumps(again.query.images))
    expected = np.asarray(first.query.images)
    shutil.rmtree(folders[0])
    np.testing.assert_array_equal(travelled[:], expected)
    assert (folders[0] / "cache.json").is_file()  # built again, where the reader expected it
    # Another image size is another cache.
    load_retrieval_data("image_folder", request(collection, cache, True, image_size=20))
    assert len([path for path in cache.iterdir() if path.is_dir()]) == 2


def test_sharded_images_index_like_an_array(collection, tmp_path):
    data = load_retrieval_data("image_folder", request(collection, tmp_path / "cache", True))
    images = data.train.images
    whole = np.asarray(images)
    rng = np.random.default_rng(1)
    picks = rng.permutation(len(images))[:37]
    np.testing.assert_array_equal(images[picks], whole[picks])
    np.testing.assert_array_equal(images[5:17], whole[5:17])
    np.testing.assert_array_equal(images[3], whole[3])
    np.testing.assert_array_equal(images.take(picks)[2:5], whole[picks][2:5])
    np.testing.assert_array_equal(images[np.array([4, 4, 2])], whole[[4, 4, 2]])  # repeats keep their order
    assert images.shape == whole.shape and len(images) == len(whole)


def test_too_many_bad_files_stop_with_the_field_and_the_fix(tmp_path):
    root = write_collection(tmp_path / "images", corrupt=12)  # 12 of 252 files: 4.8%
    with pytest.raises(DataError, match=r"12 of the 252 files .* data.max_bad_fraction=0.01.*class_0/corrupt_"):
        load_retrieval_data("image_folder", request(root, tmp_path / "cache", True))
    data = load_retrieval_data("image_folder", request(root, tmp_path / "cache", True, max_bad_fraction=0.05))
    assert len(data.bad_files) == 12 and all("Truncated" in bad.reason for bad in data.bad_files)


def test_a_decompression_bomb_is_a_bad_file_not_a_crash(tmp_path, monkeypatch):
    monkeypatch.setattr(image_files, "MAX_IMAGE_PIXELS", 10_000)
    above = tmp_path / "above.png"  # 1-2x the limit: Pillow only warns, our check refuses
    Image.fromarray(np.zeros((100, 120), np.uint8)).save(above)
    with pytest.raises(image_files.ImageDecodeError, match="120x100 pixels is above the limit of 10000"):
        image_files.decode_image_file(above, 28, 1)
    # Over twice the limit Pillow raises DecompressionBombError, which is not an OSError: a bad file too.
    bomb = tmp_path / "bomb.png"
    Image.fromarray(np.zeros((200, 300), np.uint8)).save(bomb)
    with pytest.raises(image_files.ImageDecodeError, match="DecompressionBombError"):
        image_files.decode_image_file(bomb, 28, 1)


def test_augmented_crops_depend_only_on_seed_and_step():
    settings = AugmentationSettings()
    images = np.random.default_rng(0).integers(0, 256, (6, 3, 32, 32), dtype=np.uint8)
    batches = ImageBatches(images, np.arange(6), torch.device("cpu"), settings, seed=3)
    index = torch.tensor([0, 2, 4])
    first, again, later = batches.read(index, 7), batches.read(index, 7), batches.read(index, 8)
    assert first.dtype == torch.uint8 and first.shape == (3, 3, 32, 32)
    assert torch.equal(first, again) and not torch.equal(first, later)
    assert not torch.equal(first, torch.as_tensor(images[[0, 2, 4]]))
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, height, width = crop_box(20, 30, settings, rng)
        assert 0 <= top and top + height <= 20 and 0 <= left and left + width <= 30
        assert 0.35 * 600 * 0.9 <= height * width <= 600


def _tiny_gallery(in_chans: int, embed_dim: int = 16) -> TorchGalleryModel:
    torch.manual_seed(0)
    network = torch.nn.Sequential(torch.nn.Conv2d(in_chans, 8, 3, stride=2), torch.nn.ReLU(),
                                  torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, embed_dim))
    spec = GalleryInputSpec(size=SIZE, channels=in_chans, mean=(0.5,) * in_chans, std=(0.25,) * in_chans)
    return TorchGalleryModel(NormalizedEmbedding(network), "tiny-gallery", spec, "a tiny test network")


@pytest.mark.parametrize("augmentation", [None, AugmentationSettings()], ids=["plain", "augmented"])
def test_streamed_and_in_memory_training_give_the_same_metrics(collection, tmp_path, augmentation):
    gallery_model = _tiny_gallery(3)
    space = create_space("mnv3_28", embed_dim=gallery_model.embed_dim, in_chans=3)
    spec = ArchSpec.from_json(space.smallest().to_json())
    device = torch.device("cpu")
    task = create_task("retrieval")
    settings = CompatibilityTrainingSettings(OptimSettings(epochs=2, batch_size=32, lr=3e-3, seed=0),
                                         channels_last=False, augmentation=augmentation)
    results = []
    for streaming in (True, False):
        data = load_retrieval_data("image_folder", request(collection, tmp_path / "cache", streaming))
        gallery = compute_gallery_embeddings(gallery_model, data, device, batch_size=50)
        torch.manual_seed(0)
        model = build_query_model(spec)
        history = fine_tune_candidate(model, spec.resolution, settings, TrainingRun(data, gallery, device, view_gallery=gallery_model))
        query = embed_images(model, data.query.images, ModelInput(data.mean, data.std, spec.resolution), batch_size=16)
        metrics = task.evaluate(query, data.query.labels, gallery.gallery, data.gallery.labels, "cross")
        results.append((metrics, [stats["loss"] for stats in history]))
    (streamed, streamed_losses), (in_memory, in_memory_losses) = results
    assert streamed == in_memory
    assert streamed_losses == in_memory_losses
    assert 0 <= streamed["cross_r1"] <= 100


def test_the_supernet_trains_on_streamed_augmented_batches(collection, tmp_path):
    from search_space.supernet import ElasticSupernet
    from workers.compatibility.supernet import SupernetTrainingSettings, train_supernet

    data = load_retrieval_data("image_folder", request(collection, tmp_path / "cache", True))
    gallery_model = _tiny_gallery(3)
    gallery = compute_gallery_embeddings(gallery_model, data, torch.device("cpu"), batch_size=50)
    supernet = ElasticSupernet(create_space("mnv3_28", embed_dim=gallery_model.embed_dim, in_chans=3))
    settings = SupernetTrainingSettings(CompatibilityTrainingSettings(OptimSettings(epochs=1, batch_size=64, lr=1e-3), channels_last=False, augmentation=AugmentationSettings()), num_random_subnets=0)
    with pytest.raises(ValueError, match="needs the gallery model"):
        train_supernet(supernet, settings, TrainingRun(data, gallery, torch.device("cpu")))
    (stats,) = train_supernet(supernet, settings, TrainingRun(data, gallery, torch.device("cpu"), view_gallery=gallery_model))
    assert np.isfinite(stats["loss"]) and stats["largest_loss_cosine_alignment"] > 0


def test_the_gallery_model_is_opened_in_a_trial_only_for_augmented_views():
    from workers.compatibility.targets import open_view_gallery

    assert open_view_gallery(None, None, "fingerprint") is None
    with pytest.raises(ValueError, match="needs a GalleryLoader"):
        open_view_gallery(AugmentationSettings(), None, "fingerprint")
