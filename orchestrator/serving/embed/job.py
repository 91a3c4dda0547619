"""The embedding job of ``cmpnas gallery embed``: shards on disk, resume, the assembled folder, the command.

- **One run per folder.** A run holds ``DIR`` with the output lock
  (``orchestrator.common.output_lock``) from before it reads anything there until it ends; a
  second run on the folder is refused at once, naming the holder. Two runs can therefore never
  both claim an empty folder, nor write one shard at once.
- **Shards.** The listing is cut into shards of ``shard_size`` images, written as
  ``DIR/shards/NNNNN.npy`` and ``NNNNN.ids.txt``, then ``NNNNN.sha256`` (the SHA-256 of both, in
  ``sha256sum`` format) last: a shard whose checksum file is there, and whose files match it, is
  complete. Every file is written durably (``workers.storage.durable_write``: a temporary of a
  unique name, fsynced, renamed, the folder fsynced), so a power cut leaves no torn shard behind a
  checksum file. ``DIR/shards/listing.json`` records the listing (count, digest of ids, file sizes
  and modification times, shard size) and the gallery model's fingerprint.
- **Resume.** A rerun with the same listing, shard size and gallery model embeds only the missing
  shards, and those whose files no longer match their checksums (torn, truncated or altered:
  embedded again, with a warning, never trusted). Anything else is refused, naming the
  difference: mixing shards of two listings or two models would corrupt the gallery silently.
- **Result.** Once every shard is there: ``embeddings.npy`` and ``ids.txt`` in listing order,
  ``index.faiss``, then ``gallery.json`` (the folder is finished when it is there), each durably.
  The shards are kept, so a rerun with another ``--index`` only rebuilds the index; delete
  ``DIR/shards`` to save the space.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from rich.console import Console

from orchestrator.common.output_lock import locked_output_dir
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
from orchestrator.serving.search_knobs import EF_SEARCH, NPROBE
from orchestrator.setup.data import load_data
from orchestrator.setup.ray_cluster import LOCAL, connect_ray, ray_address
from workers.gallery.sources import GalleryModel
from workers.gallery.sources.precomputed import EMBEDDINGS_FILE, IDS_FILE
from workers.storage.durable_write import replaced_durably, write_text_durably
from workers.storage.file_digest import file_sha256

Log = Callable[[str], None]

DEFAULT_SHARD_SIZE = 4096
SHARDS_DIR = "shards"
LISTING_FILE = "listing.json"
LISTING_IDS_FILE = "listing.ids.txt"
CHECKSUM_SUFFIX = ".sha256"


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
    # The index's search knobs to record as its default (None: the default by gallery size).
    nprobe: int | None = None
    ef_search: int | None = None
    shard_size: int = DEFAULT_SHARD_SIZE
    batch_size: int = DEFAULT_BATCH_SIZE
    device: torch.device | None = None
    log: Log = _quiet
    console: Console | None = None

    @property
    def search_knobs(self) -> dict[str, int | None]:
        return {NPROBE: self.nprobe, EF_SEARCH: self.ef_search}


def embed_collection(gallery: GalleryModel, collection: ImageCollection, output_dir: Path,
                     options: EmbedOptions = EmbedOptions(), runner: ShardRunner | None = None
                     ) -> EmbeddedGalleryFolder:
    """Embed ``collection`` with ``gallery`` into ``output_dir`` (the module's rules), reusing finished
    shards there. ``runner``: where shards are embedded (default: this process, ``options.device``)."""
    index_factory, shard_size, batch_size = options.index_factory, options.shard_size, options.batch_size
    if shard_size < 1 or batch_size < 1:
        raise GalleryEmbedError(f"--shard-size ({shard_size}) and --batch-size ({batch_size}) must be at least 1")
    if len(collection) == 0:
        raise GalleryEmbedError(f"{collection.description} holds no images to embed")
    # Before an hour of embedding: a factory that cannot index this many vectors fails now.
    check_index_factory(index_factory, gallery.embed_dim, len(collection), options.search_knobs)
    folder = Path(output_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise GalleryEmbedError(f"--output {str(folder)!r} cannot be created ({error}); choose another "
                                "folder") from None
    with locked_output_dir(folder, "cmpnas gallery embed", option="--output"):
        return _embed_in_held_folder(gallery, collection, folder, options, runner)


def _embed_in_held_folder(gallery: GalleryModel, collection: ImageCollection, folder: Path, options: EmbedOptions,
                          runner: ShardRunner | None) -> EmbeddedGalleryFolder:
    shard_size, log = options.shard_size, options.log
    shards_dir = folder / SHARDS_DIR
    shards_dir.mkdir(exist_ok=True)
    shards = plan_shards(len(collection), shard_size)
    _claim_listing(shards_dir, collection, shard_size, gallery)
    pending = [shard for shard in shards if not _shard_reusable(shards_dir, shard, collection, gallery.embed_dim, log)]
    reused = len(shards) - len(pending)
    log(f"embedding {len(collection)} images of {collection.description} with {gallery.description} "
        f"(D={gallery.embed_dim}, fingerprint {gallery.fingerprint[:12]}) in {len(shards)} shards of {shard_size}"
        + (f"; {reused} finished shards reused" if reused else ""))
    # Until it is written again, the folder is unfinished.
    (folder / GALLERY_RECORD_FILE).unlink(missing_ok=True)
    runner = runner or LocalShardRunner(gallery, options.device, options.batch_size)
    done_images = sum(len(shard) for shard in shards) - sum(len(shard) for shard in pending)
    with _progress(options.console, len(collection), done_images) as advance:
        for shard, embeddings in runner.embed_shards(collection, pending):
            _write_shard(shards_dir, shard, collection.ids[shard.start : shard.stop],
                         _checked(embeddings, shard, gallery))
            advance(len(shard))
    record = _assemble(folder, shards, collection, gallery, options)
    log(f"wrote {folder}: {record['count']} embeddings, index {options.index_factory!r}; use it as gallery.source: "
        f"embeddings with gallery.path: {folder}, or with `cmpnas query --index {folder}`")
    return EmbeddedGalleryFolder(folder, record, len(shards), reused)


def _claim_listing(shards_dir: Path, collection: ImageCollection, shard_size: int, gallery: GalleryModel) -> None:
    """Record the listing for later runs, or refuse when the recorded one is another."""
    wanted = {"count": len(collection), "shard_size": shard_size, "digest": collection.listing_digest(),
              "gallery_fingerprint": gallery.fingerprint, "gallery_model": gallery.description,
              "collection": collection.description}
    path = shards_dir / LISTING_FILE
    start_over = f"delete {shards_dir} or choose another --output"
    if not path.is_file():
        if any(shards_dir.glob(f"*{CHECKSUM_SUFFIX}")) or any(shards_dir.glob("*.ids.txt")):
            raise GalleryEmbedError(f"{shards_dir} holds shards but no {LISTING_FILE}, so nothing tells what they were "
                                    f"embedded from; {start_over}")
        write_text_durably(shards_dir / LISTING_IDS_FILE, "".join(f"{image_id}\n" for image_id in collection.ids))
        write_text_durably(path, json.dumps(wanted, indent=2) + "\n")
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
    return f"{described}: the same names, but files changed (size or modification time) since"


def _shard_reusable(shards_dir: Path, shard: Shard, collection: ImageCollection, dim: int, log: Log) -> bool:
    """A finished shard whose files still match their recorded checksums, ids and shape; any other
    is embedded (again), and one that was finished but no longer matches is said so."""
    ids_path, embeddings_path, checksum_path = _shard_paths(shards_dir, shard)
    if not checksum_path.is_file():
        return False  # never finished (a run stopped before its checksum file)
    try:
        recorded = _read_checksums(checksum_path)
        matches = recorded == {path.name: file_sha256(path) for path in (embeddings_path, ids_path)}
        matches = matches and ids_path.read_text().splitlines() == list(collection.ids[shard.start : shard.stop])
        stored = np.load(embeddings_path, mmap_mode="r", allow_pickle=False) if matches else None
    except (OSError, ValueError, UnicodeDecodeError):
        matches, stored = False, None
    if stored is not None and stored.shape == (len(shard), dim) and stored.dtype == np.float32:
        return True
    log(f"shard {shard.name} in {shards_dir} does not match its checksums {checksum_path.name} (torn, truncated or "
        "changed since it was written): embedding it again")
    checksum_path.unlink(missing_ok=True)
    return False


def _read_checksums(path: Path) -> dict[str, str]:
    """``sha256sum``'s lines (``DIGEST  NAME``) as {name: digest}."""
    checksums = {}
    for line in path.read_text().splitlines():
        digest, _, name = line.partition("  ")
        checksums[name] = digest
    return checksums


def _shard_paths(shards_dir: Path, shard: Shard) -> tuple[Path, Path, Path]:
    """The shard's ids, embeddings and checksum files."""
    return (shards_dir / f"{shard.name}.ids.txt", shards_dir / f"{shard.name}.npy",
            shards_dir / f"{shard.name}{CHECKSUM_SUFFIX}")


def _checked(embeddings: np.ndarray, shard: Shard, gallery: GalleryModel) -> np.ndarray:
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.shape != (len(shard), gallery.embed_dim) or not np.isfinite(embeddings).all():
        raise GalleryEmbedError(f"gallery model {gallery.description} returned {embeddings.shape} embeddings (finite: "
                                f"{bool(np.isfinite(embeddings).all())}) for shard {shard.name} of {len(shard)} "
                                f"images; expected ({len(shard)}, {gallery.embed_dim}), all finite")
    return embeddings


def _write_shard(shards_dir: Path, shard: Shard, ids: Sequence[str], embeddings: np.ndarray) -> None:
    ids_path, embeddings_path, checksum_path = _shard_paths(shards_dir, shard)
    checksum_path.unlink(missing_ok=True)  # a shard embedded again is unfinished until its new checksums
    with replaced_durably(embeddings_path) as temporary, temporary.open("wb") as handle:
        # A file handle: np.save would append ".npy" to the temporary's name.
        np.save(handle, embeddings, allow_pickle=False)
    write_text_durably(ids_path, "".join(f"{image_id}\n" for image_id in ids))
    # The checksums last, of the files as they are on disk: their presence says the shard is complete.
    write_text_durably(checksum_path, "".join(f"{file_sha256(path)}  {path.name}\n"
                                              for path in (embeddings_path, ids_path)))


def _assemble(folder: Path, shards: Sequence[Shard], collection: ImageCollection, gallery: GalleryModel,
              options: EmbedOptions) -> dict[str, Any]:
    """embeddings.npy (written through a memory map: never two copies in memory), ids.txt, index, gallery.json."""
    index_factory, log = options.index_factory, options.log
    shards_dir = folder / SHARDS_DIR
    embeddings_path = folder / EMBEDDINGS_FILE
    with replaced_durably(embeddings_path) as temporary:
        target = np.lib.format.open_memmap(temporary, mode="w+", dtype=np.float32,
                                           shape=(len(collection), gallery.embed_dim))
        for shard in shards:
            target[shard.start : shard.stop] = np.load(_shard_paths(shards_dir, shard)[1], allow_pickle=False)
        target.flush()
        del target
    write_text_durably(folder / IDS_FILE, "".join(f"{image_id}\n" for image_id in collection.ids))
    log(f"building FAISS index {index_factory!r} over {len(collection)} embeddings")
    index = build_index(np.load(embeddings_path, mmap_mode="r"), index_factory)
    save_index(index, folder / INDEX_FILE)
    search = check_index_factory(index_factory, gallery.embed_dim, len(collection), options.search_knobs)
    record = {**gallery.identity(), "count": len(collection), "index_factory": index_factory, "metric": METRIC,
              "search": search,
              "collection": collection.description, "cmpnas_version": cmpnas_version(),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "files": {"embeddings": EMBEDDINGS_FILE, "ids": IDS_FILE, "index": INDEX_FILE}}
    write_gallery_record(folder, record)
    return record


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


def recorded_gallery_fingerprint(output_dir: Path) -> str | None:
    """The gallery fingerprint an earlier run recorded in ``output_dir``'s listing, if it left one."""
    path = Path(output_dir) / SHARDS_DIR / LISTING_FILE
    try:
        return json.loads(path.read_text()).get("gallery_fingerprint") or None
    except (OSError, ValueError, AttributeError):
        return None  # none, or unreadable: _claim_listing says so with the fix


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
    recorded = recorded_gallery_fingerprint(request.output_dir)
    # A resumed folder names the model its shards came from: checked before the file is loaded (TorchScript
    # runs code when loaded), not only after.
    gallery = (loader.expecting(recorded) if recorded else loader).open()
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
