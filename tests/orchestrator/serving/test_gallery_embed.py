"""`cmpnas gallery embed`: listings, resumable shards, FAISS indexes, gallery.json, the `embeddings` source."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from orchestrator.cli import app
from orchestrator.common.output_lock import LOCK_FILE, OutputDirLockedError
from orchestrator.serving.embed import (
    SHARDS_DIR,
    EmbedOptions,
    GalleryEmbedError,
    GalleryLoader,
    LocalShardRunner,
    RayShardRunner,
    data_collection,
    embed_collection,
    folder_collection,
    list_image_files,
)
from orchestrator.serving.index import GalleryIndexError, open_embedded_gallery
from tests.orchestrator.serving.helpers import (  # noqa: F401 - checkpoint, image_root: fixtures
    EMBED_DIM,
    IMAGE_SIZE,
    checkpoint,
    image_folder_config_tree,
    image_root,
    open_tiny_gallery,
    save_tiny_gallery,
    write_image_folder,
)
from workers.datasets.image_folder import list_image_folder
from workers.gallery.sources import GallerySourceRequest, InputSpecRequest, load_gallery_model

SHARD_SIZE = 10  # 48 images: shards of 10, 10, 10, 10 and 8



@pytest.fixture(scope="module")
def gallery(checkpoint):
    return open_tiny_gallery(checkpoint)


@pytest.fixture(scope="module")
def embedded(gallery, image_root, tmp_path_factory):
    """The folder embedded in one go: what interrupted and resumed runs must reproduce."""
    return embed_collection(gallery, folder_collection(image_root), tmp_path_factory.mktemp("full") / "embedded", EmbedOptions(shard_size=SHARD_SIZE))


class Interrupted(Exception):
    pass


@dataclass
class StopAfter:
    """Embeds like the local runner, but is killed after ``shards`` shards; records what it was asked."""

    inner: LocalShardRunner
    shards: int | None = None
    asked: list[int] = field(default_factory=list)

    def embed_shards(self, collection, shards):
        self.asked += [shard.index for shard in shards]
        for done, item in enumerate(self.inner.embed_shards(collection, shards)):
            if done == self.shards:
                raise Interrupted
            yield item


def _embeddings_source(folder):
    return load_gallery_model("embeddings", GallerySourceRequest(path=folder, input=InputSpecRequest(),
                                                                 data_channels=1, data_image_size=IMAGE_SIZE))


def test_the_listing_is_recursive_sorted_and_uses_the_data_loaders_ids(image_root, tmp_path):
    loader_ids = list_image_folder(image_root).ids
    assert list_image_files(image_root) == sorted(loader_ids)
    root = write_image_folder(tmp_path / "images", classes=("a", "b"), per_class=2)
    (root / "a" / "deeper").mkdir()
    (root / "a" / "000.png").rename(root / "a" / "deeper" / "000.png")
    (root / "b" / "._001.png").write_bytes(b"macOS resource fork")
    (root / ".thumbnails").mkdir()
    (root / ".thumbnails" / "x.png").write_bytes(b"hidden")
    (root / "b" / "notes.txt").write_text("not an image")
    assert list_image_files(root) == ["a/001.png", "a/deeper/000.png", "b/000.png", "b/001.png"]


def test_an_interrupted_run_resumes_from_its_finished_shards(gallery, image_root, embedded, tmp_path):
    collection = folder_collection(image_root)
    output = tmp_path / "embedded"
    killed = StopAfter(LocalShardRunner(gallery), shards=2)
    with pytest.raises(Interrupted):
        embed_collection(gallery, collection, output, EmbedOptions(shard_size=SHARD_SIZE), runner=killed)
    assert sorted(path.name for path in (output / SHARDS_DIR).glob("0*")) == [
        "00000.ids.txt", "00000.npy", "00000.sha256", "00001.ids.txt", "00001.npy", "00001.sha256"]
    assert not (output / "gallery.json").exists()

    resumed = StopAfter(LocalShardRunner(gallery))
    result = embed_collection(gallery, collection, output, EmbedOptions(shard_size=SHARD_SIZE), runner=resumed)
    assert resumed.asked == [2, 3, 4] and (result.shards_total, result.shards_reused) == (5, 2)
    np.testing.assert_array_equal(np.load(output / "embeddings.npy"), np.load(embedded.folder / "embeddings.npy"))
    assert (output / "ids.txt").read_text() == (embedded.folder / "ids.txt").read_text()

    # A deleted shard is embedded again, alone; the finished folder is rebuilt from the shards.
    (output / SHARDS_DIR / "00003.ids.txt").unlink()
    (output / "embeddings.npy").unlink()
    again = StopAfter(LocalShardRunner(gallery))
    embed_collection(gallery, collection, output, EmbedOptions(shard_size=SHARD_SIZE), runner=again)
    assert again.asked == [3]
    np.testing.assert_array_equal(np.load(output / "embeddings.npy"), np.load(embedded.folder / "embeddings.npy"))


def test_a_changed_listing_or_gallery_model_is_refused_on_resume(gallery, image_root, checkpoint, tmp_path):
    root = write_image_folder(tmp_path / "images", classes=("a", "b"), per_class=6)
    output = tmp_path / "embedded"
    embed_collection(gallery, folder_collection(root), output, EmbedOptions(shard_size=4))
    (root / "a" / "002.png").rename(root / "a" / "002b.png")
    with pytest.raises(GalleryEmbedError, match=r"image 2 was 'a/002.png', now 'a/002b.png'.*delete .*shards"):
        embed_collection(gallery, folder_collection(root), output, EmbedOptions(shard_size=4))
    (root / "a" / "002b.png").rename(root / "a" / "002.png")
    # Rewritten under its name with the same size: its modification time tells (the rename above kept it).
    before = (root / "a" / "003.png").stat()
    os.utime(root / "a" / "003.png", ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))
    with pytest.raises(GalleryEmbedError, match=r"files changed \(size or modification time\)"):
        embed_collection(gallery, folder_collection(root), output, EmbedOptions(shard_size=4))
    os.utime(root / "a" / "003.png", ns=(before.st_atime_ns, before.st_mtime_ns))
    with pytest.raises(GalleryEmbedError, match="--shard-size 4, this run uses 5"):
        embed_collection(gallery, folder_collection(root), output, EmbedOptions(shard_size=5))
    other = open_tiny_gallery(save_tiny_gallery(tmp_path / "other.safetensors", seed=1))
    with pytest.raises(GalleryEmbedError, match="embedded by gallery model resnet10t"):
        embed_collection(other, folder_collection(root), output, EmbedOptions(shard_size=4))


def test_a_torn_or_altered_shard_is_embedded_again_not_trusted(gallery, image_root, embedded, tmp_path):
    collection = folder_collection(image_root)
    output = tmp_path / "embedded"
    embed_collection(gallery, collection, output, EmbedOptions(shard_size=SHARD_SIZE))
    shards = output / SHARDS_DIR
    torn = shards / "00001.npy"  # cut short, as a power cut after an unsynced write leaves it
    torn.write_bytes(torn.read_bytes()[:200])
    altered = shards / "00003.npy"  # same header and shape, other values: only the checksum tells
    data = bytearray(altered.read_bytes())
    data[-8:] = bytes(8)
    altered.write_bytes(bytes(data))
    logged = []
    again = StopAfter(LocalShardRunner(gallery))
    embed_collection(gallery, collection, output, EmbedOptions(shard_size=SHARD_SIZE, log=logged.append), runner=again)
    assert again.asked == [1, 3]
    assert [line for line in logged if "does not match its checksums" in line and "embedding it again" in line]
    np.testing.assert_array_equal(np.load(output / "embeddings.npy"), np.load(embedded.folder / "embeddings.npy"))
    # What the rerun wrote is checked again, and reused.
    final = StopAfter(LocalShardRunner(gallery))
    embed_collection(gallery, collection, output, EmbedOptions(shard_size=SHARD_SIZE), runner=final)
    assert final.asked == []


def test_a_second_run_on_a_folder_in_use_is_refused_at_once(gallery, image_root, checkpoint, tmp_path):
    output = tmp_path / "embedded"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from orchestrator.common.output_lock import locked_output_dir\n"
         f"with locked_output_dir({str(output)!r}, 'cmpnas gallery embed'):\n    print('held', flush=True); "
         "time.sleep(600)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(OutputDirLockedError, match=rf"--output=.*cmpnas gallery embed, pid {holder.pid}.*another"):
            embed_collection(gallery, folder_collection(image_root), output, EmbedOptions(shard_size=SHARD_SIZE))
        tree = image_folder_config_tree(image_root, checkpoint, tmp_path / "out")
        code, text = _cli(tmp_path, tree, "--output", str(output), "--images", str(image_root))
        assert code == 2 and "OutputDirLockedError" in text and f"pid {holder.pid}" in text, text
        assert sorted(path.name for path in output.iterdir()) == [LOCK_FILE]  # nothing claimed, nothing written
    finally:
        holder.kill()
        holder.wait()
    assert embed_collection(gallery, folder_collection(image_root), output, EmbedOptions(shard_size=SHARD_SIZE)).count == 48


def test_every_file_of_the_folder_is_written_durably(gallery, image_root, tmp_path, synced_paths):
    """Each file goes through workers.storage.durable_write: a temporary of its own, fsynced, renamed,
    the folder fsynced after the rename; no fixed `.partial` name that two writers would share."""
    synced = synced_paths
    output = (tmp_path / "embedded").resolve()
    embed_collection(gallery, folder_collection(image_root), output, EmbedOptions(shard_size=SHARD_SIZE))
    for folder, name in [(output, "index.faiss"), (output, "gallery.json"), (output, "embeddings.npy"),
                         (output, "ids.txt"), (output / SHARDS_DIR, "00004.npy"), (output / SHARDS_DIR, "00004.sha256"),
                         (output / SHARDS_DIR, "listing.json")]:
        temporaries = [index for index, path in enumerate(synced)
                       if path.parent == folder and path.name.startswith(f".{name}.") and path.name.endswith(".tmp")]
        assert temporaries, f"{name} was not written through a fsynced temporary"
        assert folder in synced[temporaries[-1] + 1 :], f"{folder} was not fsynced after {name} was renamed into it"
    assert not [path for path in output.rglob("*") if path.name.endswith((".partial", ".tmp"))]


def test_gallery_json_describes_the_folder(gallery, embedded):
    record = json.loads((embedded.folder / "gallery.json").read_text())
    assert {key: record[key] for key in ("fingerprint", "source", "model", "embed_dim", "input")} == gallery.identity()
    assert record["count"] == 48 and record["index_factory"] == "Flat" and record["metric"] == "inner_product"
    assert record["cmpnas_version"] and record["created"] and record["input"]["size"] == IMAGE_SIZE


def test_the_folder_is_an_embeddings_gallery_source_with_the_same_vectors(gallery, image_root, embedded):
    ids = (embedded.folder / "ids.txt").read_text().splitlines()
    source = _embeddings_source(embedded.folder)
    assert source.embed_dim == EMBED_DIM
    images = folder_collection(image_root).read(0, 48, gallery.input_spec)
    direct = gallery.embed(images, ids, "cpu")
    np.testing.assert_allclose(source.embed(images, ids, "cpu"), direct, atol=1e-6)


def test_the_data_splits_are_embedded_as_the_search_embeds_them(gallery, image_root, checkpoint, embedded, tmp_path):
    from orchestrator.config import validate_config
    from orchestrator.setup.data import load_data

    data = load_data(validate_config(image_folder_config_tree(image_root, checkpoint, tmp_path / "out")))
    result = embed_collection(gallery, data_collection(data), tmp_path / "splits", EmbedOptions(shard_size=SHARD_SIZE))
    source = _embeddings_source(result.folder)
    for split in (data.train, data.query, data.gallery):
        ids = [str(image_id) for image_id in split.ids]
        np.testing.assert_allclose(source.embed(split.images, ids, "cpu"), gallery.embed(split.images, ids, "cpu"),
                                   atol=1e-6)
    # Same ids as the image-folder listing, and the same vectors: either collection serves a search.
    from_folder = _embeddings_source(embedded.folder)
    ids = [str(image_id) for image_id in data.gallery.ids]
    np.testing.assert_allclose(source.embed(None, ids, "cpu"), from_folder.embed(None, ids, "cpu"), atol=1e-6)
    with pytest.raises(GalleryEmbedError, match="--split"):
        data_collection(data, ("val",))


@pytest.mark.parametrize("factory", ["Flat", "HNSW32"])
def test_each_embedding_finds_itself_first_in_the_index(gallery, image_root, embedded, tmp_path, factory):
    # A rerun over finished shards with another factory only rebuilds the index.
    output = tmp_path / "copy"
    (output / SHARDS_DIR).mkdir(parents=True)
    for path in (embedded.folder / SHARDS_DIR).iterdir():
        (output / SHARDS_DIR / path.name).write_bytes(path.read_bytes())
    runner = StopAfter(LocalShardRunner(gallery))
    embed_collection(gallery, folder_collection(image_root), output, EmbedOptions(shard_size=SHARD_SIZE, index_factory=factory), runner=runner)
    assert runner.asked == []
    opened = open_embedded_gallery(output)
    assert opened.record["index_factory"] == factory
    vectors = np.load(output / "embeddings.npy")
    scores, rows = opened.search(vectors, 3)
    np.testing.assert_array_equal(rows[:, 0], np.arange(len(vectors)))
    assert (np.diff(scores, axis=1) <= 1e-6).all()


def test_trained_index_factories_need_enough_vectors_and_are_checked_before_embedding(gallery, image_root, tmp_path):
    with pytest.raises(GalleryIndexError, match="'IVF64,Flat' has 64 centroids to train but the gallery has only 48"):
        embed_collection(gallery, folder_collection(image_root), tmp_path / "ivf", EmbedOptions(index_factory="IVF64,Flat"))
    assert not (tmp_path / "ivf").exists()
    with pytest.raises(GalleryIndexError, match="not a FAISS index factory"):
        embed_collection(gallery, folder_collection(image_root), tmp_path / "bad", EmbedOptions(index_factory="Bogus9"))
    trained = embed_collection(gallery, folder_collection(image_root), tmp_path / "ivf4", EmbedOptions(index_factory="IVF4,Flat"))
    assert open_embedded_gallery(trained.folder).index.ntotal == 48


@pytest.mark.integration
def test_ray_data_actors_embed_the_same_shards(gallery, checkpoint, image_root, embedded, tmp_path):
    import ray

    loader = GalleryLoader("cmpnas", GallerySourceRequest(path=checkpoint, input=InputSpecRequest(), data_channels=1,
                                                          data_image_size=IMAGE_SIZE))
    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False, log_to_driver=False)
    try:
        runner = RayShardRunner(loader, gallery.fingerprint, actors=2)
        result = embed_collection(gallery, folder_collection(image_root), tmp_path / "ray", EmbedOptions(shard_size=SHARD_SIZE), runner=runner)
    finally:
        ray.shutdown()
    assert result.shards_total == 5
    np.testing.assert_allclose(np.load(result.folder / "embeddings.npy"), np.load(embedded.folder / "embeddings.npy"),
                               atol=1e-6)


def _cli(tmp_path, tree, *args):
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(tree))
    result = CliRunner().invoke(app, ["gallery", "embed", "--config", str(config), *args], env={"COLUMNS": "200"})
    return result.exit_code, " ".join(result.output.split())


def test_the_command_embeds_a_folder_and_explains_a_missing_gallery(image_root, checkpoint, tmp_path):
    tree = image_folder_config_tree(image_root, checkpoint, tmp_path / "out")
    code, text = _cli(tmp_path, tree, "--output", str(tmp_path / "cli"), "--images", str(image_root),
                      "--index", "HNSW32", "--shard-size", "16")
    assert code == 0, text
    assert "48 embeddings (D=16), index 'HNSW32', 0 of 3 shards reused" in text
    assert open_embedded_gallery(tmp_path / "cli").record["count"] == 48
    code, text = _cli(tmp_path, tree, "--output", str(tmp_path / "split"), "--split", "gallery")
    assert code == 0, text
    assert open_embedded_gallery(tmp_path / "split").record["count"] == tree["data"]["gallery_size"]

    missing = {**tree, "gallery": {**tree["gallery"], "checkpoint": str(tmp_path / "none.safetensors")}}
    code, text = _cli(tmp_path, missing, "--output", str(tmp_path / "x"), "--images", str(image_root))
    assert code == 2 and "cmpnas gallery train" in text
    code, text = _cli(tmp_path, tree, "--output", str(tmp_path / "x"), "--images", str(image_root), "--split", "train")
    assert code == 2 and "--split" in text
