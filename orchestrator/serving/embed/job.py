"""The embedding job of ``cmpnas gallery embed``: shards on disk, resume, the assembled folder, the command.

- **Shards.** The listing is cut into shards of ``shard_size`` images, written as
  ``DIR/shards/NNNNN.npy`` and ``NNNNN.ids.txt``, each atomically (a temporary file, then a
  rename) and the ids last: a shard whose ids file is there is complete.
  ``DIR/shards/listing.json`` records the listing (count, digest of ids and file sizes, shard
  size) and the gallery model's fingerprint.
- **Resume.** A rerun with the same listing, shard size and gallery model embeds only the missing
  shards. Anything else is refused, naming the difference: mixing shards of two listings or two
  models would corrupt the gallery silently.
- **Result.** Once every shard is there: ``embeddings.npy`` and ``ids.txt`` in listing order,
  ``index.faiss``, then ``gallery.json`` (the folder is finished when it is there). The shards
  are kept, so a rerun with another ``--index`` only rebuilds the index; delete ``DIR/shards``
  to save the space.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from rich.console import Console

from orchestrator.common.version import cmpnas_version
from orchestrator.config import CmpnasConfig
from orchestrator.serving.embed.errors import GalleryEmbedError
from orchestrator.serving.embed.image_collections import SPLITS, ImageCollection, data_collection, folder_collection
from orchestrator.serving.embed.runners import (
    DEFAULT_BATCH_SIZE,
    LocalShardRunner,
    RayShardRunner,
    Shard,
    ShardRunner,
    configured_gallery_loader,
    plan_shards,
)
from orchestrator.serving.index import (
    GALLERY_RECORD_FILE,
    INDEX_FILE,
    METRIC,
    build_index,
    check_index_factory,
    save_index,
    write_gallery_record,
)
from orchestrator.setup.data import load_data
from orchestrator.setup.ray_cluster import LOCAL, connect_ray, ray_address
from workers.gallery.sources import GalleryModel
from workers.gallery.sources.precomputed import EMBEDDINGS_FILE, IDS_FILE

Log = Callable[[str], None]

DEFAULT_SHARD_SIZE = 4096
SHARDS_DIR = "shards"
LISTING_FILE = "listing.json"
LISTING_IDS_FILE = "listing.ids.txt"
PARTIAL_SUFFIX = ".partial"


def _quiet(_message: str) -> None:
    pass


@dataclass(frozen=True)
class EmbeddedGalleryFolder:
    """What ``embed_collection`` made: the folder, its ``gallery.json`` record, and how much was reused."""

    folder: Path
    record: dict[str, Any]
    shards_total: int
    shards_reused: int

    @property
    def count(self) -> int:
        return int(self.record["count"])


@dataclass(frozen=True)
class EmbedOptions:
    """How an embedding job runs and reports: the FAISS index factory, images per shard and per
    forward pass, the device of the local runner (None: a GPU when there is one), ``log`` for its
    lines and ``console`` for a progress bar (None: none)."""

    index_factory: str = "Flat"
    shard_size: int = DEFAULT_SHARD_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    device: torch.device | None = None
    log: Log = _quiet
    console: Console | None = None


def embed_collection(gallery: GalleryModel, collection: ImageCollection, output_dir: Path,
                     options: EmbedOptions = EmbedOptions(), runner: ShardRunner | None = None
                     ) -> EmbeddedGalleryFolder:
    """Embed ``collection`` with ``gallery`` into ``output_dir`` (the module's rules), reusing finished
    shards there. ``runner``: where shards are embedded (default: this process, ``options.device``)."""
    index_factory, shard_size, batch_size = options.index_factory, options.shard_size, options.batch_size
    log = options.log
    if shard_size < 1 or batch_size < 1:
        raise GalleryEmbedError(f"--shard-size ({shard_size}) and --batch-size ({batch_size}) must be at least 1")
    if len(collection) == 0:
        raise GalleryEmbedError(f"{collection.description} holds no images to embed")
    # Before an hour of embedding: a factory that cannot index this many vectors fails now.
    check_index_factory(index_factory, gallery.embed_dim, len(collection))
    folder = Path(output_dir)
    shards_dir = folder / SHARDS_DIR
    try:
        shards_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GalleryEmbedError(f"--output {str(folder)!r} cannot be created ({error}); choose another "
                                "folder") from None
    shards = plan_shards(len(collection), shard_size)
    _claim_listing(shards_dir, collection, shard_size, gallery)
    pending = [shard for shard in shards if not _shard_complete(shards_dir, shard, collection, gallery.embed_dim)]
    reused = len(shards) - len(pending)
    log(f"embedding {len(collection)} images of {collection.description} with {gallery.description} "
        f"(D={gallery.embed_dim}, fingerprint {gallery.fingerprint[:12]}) in {len(shards)} shards of {shard_size}"
        + (f"; {reused} finished shards reused" if reused else ""))
    # Until it is written again, the folder is unfinished.
    (folder / GALLERY_RECORD_FILE).unlink(missing_ok=True)
    runner = runner or LocalShardRunner(gallery, options.device, batch_size)
    done_images = sum(len(shard) for shard in shards) - sum(len(shard) for shard in pending)
    with _progress(options.console, len(collection), done_images) as advance:
        for shard, embeddings in runner.embed_shards(collection, pending):
            _write_shard(shards_dir, shard, collection.ids[shard.start : shard.stop],
                         _checked(embeddings, shard, gallery))
            advance(len(shard))
    record = _assemble(folder, shards, collection, gallery, index_factory, log)
    log(f"wrote {folder}: {record['count']} embeddings, index {index_factory!r}; use it as gallery.source: embeddings "
        f"with gallery.path: {folder}, or with `cmpnas query --index {folder}`")
    return EmbeddedGalleryFolder(folder, record, len(shards), reused)


def _claim_listing(shards_dir: Path, collection: ImageCollection, shard_size: int, gallery: GalleryModel) -> None:
    """Record the listing for later runs, or refuse when the recorded one is another."""
    wanted = {"count": len(collection), "shard_size": shard_size, "digest": collection.listing_digest(),
              "gallery_fingerprint": gallery.fingerprint, "gallery_model": gallery.description,
              "collection": collection.description}
    path = shards_dir / LISTING_FILE
    start_over = f"delete {shards_dir} or choose another --output"
    if not path.is_file():
        if any(shards_dir.glob("*.ids.txt")):
            raise GalleryEmbedError(f"{shards_dir} holds shards but no {LISTING_FILE}, so nothing tells what they were "
                                    f"embedded from; {start_over}")
        _write_atomically(shards_dir / LISTING_IDS_FILE, "".join(f"{image_id}\n" for image_id in collection.ids))
        _write_atomically(path, json.dumps(wanted, indent=2) + "\n")
        return
    try:
        recorded = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise GalleryEmbedError(f"{path} is corrupt ({error}); {start_over}") from None
    problems = []
    if recorded.get("gallery_fingerprint") != gallery.fingerprint:
        problems.append(f"they were embedded by gallery model {recorded.get('gallery_model')} (fingerprint "
                        f"{str(recorded.get('gallery_fingerprint'))[:12]}), this run uses {gallery.description} "
                        f"({gallery.fingerprint[:12]})")
    if recorded.get("digest") != wanted["digest"]:
        problems.append(_listing_difference(shards_dir / LISTING_IDS_FILE, collection, recorded))
    if recorded.get("shard_size") != shard_size:
        problems.append(f"they were cut with --shard-size {recorded.get('shard_size')}, this run uses {shard_size}")
    if problems:
        raise GalleryEmbedError(
            f"{shards_dir} holds the shards of another embedding: " + "; ".join(problems) + ". To resume it, run "
            f"with the same images, gallery model and --shard-size; to start over, {start_over}"
        )


def _listing_difference(listing_ids: Path, collection: ImageCollection, recorded: dict) -> str:
    before = listing_ids.read_text().splitlines() if listing_ids.is_file() else []
    now = list(collection.ids)
    described = f"they are of {recorded.get('collection')} ({recorded.get('count')} images), this run lists " \
                f"{collection.description} ({len(now)} images)"
    for position, (then, current) in enumerate(zip(before, now)):
        if then != current:
            return f"{described}: image {position} was {then!r}, now {current!r}"
    if len(before) != len(now):
        return f"{described}: images were added or removed at the end"
    return f"{described}: the same names, but files changed size since"


def _shard_complete(shards_dir: Path, shard: Shard, collection: ImageCollection, dim: int) -> bool:
    ids_path, embeddings_path = _shard_paths(shards_dir, shard)
    if not ids_path.is_file() or not embeddings_path.is_file():
        return False
    if ids_path.read_text().splitlines() != list(collection.ids[shard.start : shard.stop]):
        return False
    try:
        stored = np.load(embeddings_path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError):
        return False
    return stored.shape == (len(shard), dim) and stored.dtype == np.float32


def _shard_paths(shards_dir: Path, shard: Shard) -> tuple[Path, Path]:
    return shards_dir / f"{shard.name}.ids.txt", shards_dir / f"{shard.name}.npy"


def _checked(embeddings: np.ndarray, shard: Shard, gallery: GalleryModel) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.shape != (len(shard), gallery.embed_dim) or not np.isfinite(embeddings).all():
        raise GalleryEmbedError(f"gallery model {gallery.description} returned {embeddings.shape} embeddings (finite: "
                                f"{bool(np.isfinite(embeddings).all())}) for shard {shard.name} of {len(shard)} "
                                f"images; expected ({len(shard)}, {gallery.embed_dim}), all finite")
    return embeddings


def _write_shard(shards_dir: Path, shard: Shard, ids: Sequence[str], embeddings: np.ndarray) -> None:
    ids_path, embeddings_path = _shard_paths(shards_dir, shard)
    _save_array_atomically(embeddings_path, embeddings)
    # The ids file last: its presence says the shard is complete.
    _write_atomically(ids_path, "".join(f"{image_id}\n" for image_id in ids))


def _assemble(folder: Path, shards: Sequence[Shard], collection: ImageCollection, gallery: GalleryModel,
              index_factory: str, log: Log) -> dict[str, Any]:
    """embeddings.npy (written through a memory map: never two copies in memory), ids.txt, index, gallery.json."""
    shards_dir = folder / SHARDS_DIR
    embeddings_path = folder / EMBEDDINGS_FILE
    partial = embeddings_path.with_name(embeddings_path.name + PARTIAL_SUFFIX)
    target = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32,
                                       shape=(len(collection), gallery.embed_dim))
    for shard in shards:
        target[shard.start : shard.stop] = np.load(_shard_paths(shards_dir, shard)[1], allow_pickle=False)
    target.flush()
    del target
    os.replace(partial, embeddings_path)
    _write_atomically(folder / IDS_FILE, "".join(f"{image_id}\n" for image_id in collection.ids))
    log(f"building FAISS index {index_factory!r} over {len(collection)} embeddings")
    index = build_index(np.load(embeddings_path, mmap_mode="r"), index_factory)
    save_index(index, folder / INDEX_FILE)
    record = {**gallery.identity(), "count": len(collection), "index_factory": index_factory, "metric": METRIC,
              "collection": collection.description, "cmpnas_version": cmpnas_version(),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "files": {"embeddings": EMBEDDINGS_FILE, "ids": IDS_FILE, "index": INDEX_FILE}}
    write_gallery_record(folder, record)
    return record


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    partial.write_text(text)
    os.replace(partial, path)


def _save_array_atomically(path: Path, array: np.ndarray) -> None:
    partial = path.with_name(path.name + PARTIAL_SUFFIX)
    with partial.open("wb") as handle:  # a file handle: np.save would append ".npy" to the partial name
        np.save(handle, array, allow_pickle=False)
    os.replace(partial, path)


@contextmanager
def _progress(console: Console | None, total: int, completed: int) -> Iterator[Callable[[int], None]]:
    if console is None:
        yield lambda _images: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("gallery embedding"), BarColumn(), MofNCompleteColumn(), TextColumn("images"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as progress:
        task = progress.add_task("embed", total=total, completed=completed)
        yield lambda images: progress.advance(task, images)


# --- the command ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class GalleryEmbedRequest:
    """``cmpnas gallery embed``'s options beyond the config: the folder, what to embed (an image folder,
    else the configured data's splits), how (``EmbedOptions``), and on Ray, how many actors."""

    output_dir: Path
    images: Path | None = None
    splits: tuple[str, ...] = SPLITS
    options: EmbedOptions = EmbedOptions()
    actors: int | None = None


def embed_configured_gallery(config: CmpnasConfig, request: GalleryEmbedRequest) -> EmbeddedGalleryFolder:
    """The configured gallery model over ``request.images`` (else the configured data's splits); on the
    Ray cluster of ``ray.address`` where one is set, else in this process."""
    if request.images is not None:
        collection: ImageCollection = folder_collection(request.images)
        loader = configured_gallery_loader(config, config.data.channels, config.data.image_size)
    else:
        data = load_data(config)
        collection = data_collection(data, request.splits)
        loader = configured_gallery_loader(config, data.in_chans, data.image_size)
    gallery = loader.open()
    if ray_address(config.ray) == LOCAL:
        return embed_collection(gallery, collection, request.output_dir, request.options)
    import ray  # only when joining a cluster: a local embedding needs no Ray

    started = connect_ray(config.ray, [])
    try:
        runner = RayShardRunner(loader, gallery.fingerprint, request.options.batch_size, request.actors)
        return embed_collection(gallery, collection, request.output_dir, request.options, runner)
    finally:
        if started:
            ray.shutdown()
