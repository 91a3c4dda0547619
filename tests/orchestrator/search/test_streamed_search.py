"""A search on a colour photo folder: streamed from the shard cache, bad files skipped and recorded,
augmented training with the gallery model's targets computed on each view, the schedule raised to
``training.min_steps``."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from orchestrator.config import validate_config
from orchestrator.search.driver import run_search
from orchestrator.search.parent_run import BAD_FILES_FILE
from orchestrator.tracking.client import SearchTracker
from tests.conftest import tiny_tree

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("shared_ray")]


def _photos(root, classes: int = 3, per_class: int = 40, size: int = 64):
    rng = np.random.default_rng(0)
    for label in range(classes):
        folder = root / f"class_{label}"
        folder.mkdir(parents=True)
        tint = rng.integers(0, 256, 3)
        for index in range(per_class):
            pixels = (rng.normal(0, 30, (size, size + 8, 3)) + tint).clip(0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{index}.jpg")
    (root / "class_0" / "truncated.jpg").write_bytes(b"\xff\xd8\xff\xe0 cut short")
    return root


def test_a_streamed_photo_search_records_bad_files_and_augments(tmp_path, monkeypatch):
    _photos(tmp_path / "photos")
    # Relative paths, as a user writes them: Tune runs each trial in its own working directory, so
    # the trials' gallery model (opened for augmented views) and the cache must not depend on it.
    monkeypatch.chdir(tmp_path)
    tree = tiny_tree(
        tmp_path,
        data={"source": "image_folder", "root": "photos", "image_size": 64, "channels": 3, "train_size": None,
              "query_size": 15, "gallery_size": 30, "max_bad_fraction": 0.05, "cache_dir": "cache"},
        gallery={"checkpoint": None, "epochs": 1, "batch_size": 32},
        search_space={"name": "mnv3_64"},
        # 75 training images in batches of 64: 2 steps an epoch, so min_steps 4 means 2 epochs.
        training={"epochs": 1, "batch_size": 64, "min_steps": 4},
        search={"strategy": "random", "num_candidates": 1, "max_concurrent": 1, "max_mflops": 18.0},
        resources={"measure_latency": False},
        output_dir="out",
    )
    config = validate_config(tree)
    outcome = run_search(config, Console(quiet=True))
    tracker = SearchTracker.open_existing(config.tracking.uri, config.tracking.experiment)
    parent = tracker.client.get_run(outcome.parent_run_id)
    assert parent.data.metrics["data_bad_files"] == 1
    assert parent.data.params["streamed"] == "True" and parent.data.params["train_images"] == "75"
    listed = tracker.client.download_artifacts(outcome.parent_run_id, BAD_FILES_FILE, str(tmp_path / "fetched"))
    rows = open(listed).read().splitlines()
    assert rows[0] == "id,reason" and rows[1].startswith("class_0/truncated.jpg,")
    (child,) = tracker.child_runs(outcome.parent_run_id)
    # min_steps raised the one configured epoch to two, each logged.
    assert len(tracker.client.get_metric_history(child.info.run_id, "loss")) == 2
    assert child.data.tags["cmpnas.compatibility"] in ("passed", "failed")
    assert child.data.metrics["final_peak_rss_mb"] > 0
    # The cache was built once, in the configured folder, and holds every file's record.
    (cache,) = [path for path in (tmp_path / "cache").iterdir() if path.is_dir()]
    assert sum(path.stat().st_size for path in cache.glob("records-*")) == 121 * 3 * 64 * 64


def test_the_ray_data_gallery_pass_equals_the_pass_in_this_process(tmp_path, monkeypatch):
    import ray
    import timm
    import torch
    from safetensors.torch import save_file

    from orchestrator.setup import gallery_pass
    from orchestrator.setup.gallery_pass import RayDataGalleryPass
    from workers.datasets import DataRequest, load_retrieval_data
    from workers.gallery.sources import GalleryLoader, GallerySourceRequest, InputSpecRequest

    root = _photos(tmp_path / "photos", per_class=30, size=32)
    data = load_retrieval_data("image_folder", DataRequest(root=str(root), query_size=9, gallery_size=18,
                                                           image_size=32, channels=3, streaming=True,
                                                           cache_dir=str(tmp_path / "cache"), max_bad_fraction=0.05))
    torch.manual_seed(0)
    weights = tmp_path / "gallery.safetensors"
    save_file(timm.create_model("resnet10t", num_classes=0).state_dict(), str(weights))
    loader = GalleryLoader("timm", GallerySourceRequest(weights, InputSpecRequest(size=32), data_channels=3,
                                                        data_image_size=32, backbone="resnet10t"))
    model = loader.open()
    monkeypatch.setattr(gallery_pass, "RANGE_SIZE", 16)  # several ranges per split, finishing in any order
    assert ray.is_initialized()  # the module's shared Ray
    on_ray = RayDataGalleryPass(loader, model.embed_dim, model.fingerprint)
    for split in ("train", "query"):
        images = getattr(data, split)
        embedded, count = on_ray(split, images)
        here = model.embed(images.images, list(images.ids), torch.device("cpu"))
        assert count == len(images) and embedded.shape == here.shape
        np.testing.assert_allclose(embedded, here, atol=1e-5)
