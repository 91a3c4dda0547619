"""File collections decoded once: into memory, or into the shard cache read by batch (streaming).

Both paths decode every file with the same function (``image_files.decode_image_file``) in the
listing's order, so for one collection they hold the same pixels and a search gives the same
metrics either way. Decoding runs in ``workers`` threads, by default the CPUs this process may
use (``workers.datasets.cpus``: affinity and cgroup quota, not the host's cores). Pillow releases
the GIL while it decodes and resizes, so threads scale with the cores without a process start or
a re-import of the caller's main module.

Bad files (not an image, truncated, too large: ``ImageDecodeError``) are skipped and reported
(``BadFile``), and the shard cache records them. Nothing else is: an error of the system while
reading a file (``ImageReadError``) or a ``MemoryError`` stops the decoding, names the file, and
leaves no cache behind, so a run after the cause is fixed decodes the file again. When more than
``max_bad_fraction`` of the files are bad the collection is refused with the first reasons.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import PIL

from workers.datasets.errors import DataError
from workers.datasets.image_files import ImageDecodeError, decode_image_file
from workers.datasets.listing import LabelledFiles
from workers.datasets.cache_trust import CacheTrust
from workers.datasets.cpus import usable_cpus
from workers.datasets.shard_cache import CacheLayout, ShardedImages, ShardWriter, build_cache, default_cache_root
from workers.datasets.types import BadFile

# Part of every cache key: a change to how files become records (Pillow's decoders and resampling
# included) must never reuse records made the old way. 2: JPEG drafts, 16-bit gray scaled.
CACHE_KEY_VERSION = f"cmpnas-shards-2:pillow-{PIL.__version__}"

CHUNK_BYTES = 8 * 2**20  # decoded bytes per task handed to a decoding thread


@dataclass(frozen=True)
class DecodeSettings:
    image_size: int
    channels: int
    streaming: bool = False
    cache_root: str | None = None
    workers: int | None = None
    max_bad_fraction: float = 0.01
    cache_trusted_group: str | None = None  # data.cache_trusted_group (workers.datasets.cache_trust)


@dataclass(frozen=True)
class DecodedFiles:
    """The good files of a listing (in its order) and their images; the bad ones with their reasons."""

    files: LabelledFiles
    images: np.ndarray | ShardedImages
    bad: tuple[BadFile, ...]


def decode_files(listing: LabelledFiles, settings: DecodeSettings) -> DecodedFiles:
    if settings.channels not in (1, 3):
        raise DataError(f"data.channels must be 1 (grayscale) or 3 (RGB), got {settings.channels}")
    shape = (settings.channels, settings.image_size, settings.image_size)
    if settings.streaming:
        images, bad_positions = _decode_to_cache(listing, settings, shape)
    else:
        images = np.zeros((len(listing), *shape), dtype=np.uint8)

        def write(start: int, records: np.ndarray) -> None:
            images[start : start + len(records)] = records

        bad_positions = decode_into(listing.paths, settings, write)
    bad = tuple(BadFile(str(listing.ids[position]), reason) for position, reason in sorted(bad_positions.items()))
    check_bad_fraction(bad, len(listing), listing.description, settings.max_bad_fraction)
    good = np.setdiff1d(np.arange(len(listing)), np.fromiter(bad_positions, dtype=np.int64, count=len(bad_positions)))
    kept = images.take(good) if isinstance(images, ShardedImages) else images[good]
    return DecodedFiles(listing.subset(good), kept, bad)


def check_bad_fraction(bad: tuple[BadFile, ...], total: int, description: str, limit: float) -> None:
    if total and len(bad) / total > limit:
        examples = "; ".join(f"{item.id}: {item.reason}" for item in bad[:5])
        raise DataError(
            f"{len(bad)} of the {total} files of {description} could not be decoded ({len(bad) / total:.1%}, above "
            f"data.max_bad_fraction={limit}), e.g. {examples}. Remove or replace them, or raise data.max_bad_fraction "
            "to skip them"
        )


def _decode_to_cache(listing: LabelledFiles, settings: DecodeSettings, shape: tuple[int, int, int]
                     ) -> tuple[ShardedImages, dict[int, str]]:
    root = Path(settings.cache_root).expanduser() if settings.cache_root else default_cache_root()
    key = listing.content_key(CACHE_KEY_VERSION, shape)
    layout = CacheLayout(root / key, shape, len(listing), CacheTrust(settings.cache_trusted_group))
    rebuild = CacheRebuild(listing, settings, layout, key)
    record = rebuild()
    bad = {int(position): reason for position, reason in record["bad"].items()}
    return ShardedImages(layout, rebuild=rebuild), bad


@dataclass(frozen=True)
class CacheRebuild:
    """Builds (or finds) the cache of a listing at ``layout``: called by the job, and by a reader on a
    node without it. There the files must be the ones the job listed (``key``: same paths, sizes and
    modification times), or the reader would see other images under the same ids."""

    listing: LabelledFiles
    settings: DecodeSettings
    layout: CacheLayout
    key: str

    def __call__(self) -> dict:
        def fill(writer: ShardWriter) -> dict[int, str]:
            here = self.listing.content_key(CACHE_KEY_VERSION, self.layout.record_shape)
            if here != self.key:
                raise DataError(
                    f"the files of {self.listing.description} on this node differ from the ones the job listed (size "
                    "or modification time): every node must see the same files at the same paths, or set "
                    "data.cache_dir to a folder all nodes share so that the cache is built once"
                )
            return decode_into(self.listing.paths, self.settings, writer.write)

        try:
            return build_cache(self.layout, fill, self.listing.description)
        except OSError as error:
            raise DataError(f"cannot write the shard cache {self.layout.folder} ({error}); set data.cache_dir to a "
                            "writable folder with room for the decoded images") from error


def decode_into(paths: np.ndarray, settings: DecodeSettings, write) -> dict[int, str]:
    """Decode every path, handing each decoded chunk to ``write(start, records)``; the bad positions
    and reasons. Chunks are written in order, at most two per thread in flight, so memory stays bounded."""
    record_bytes = settings.channels * settings.image_size ** 2
    chunk = max(1, CHUNK_BYTES // record_bytes)
    starts = range(0, len(paths), chunk)
    workers = settings.workers or usable_cpus()
    bad: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(starts)))) as pool:
        pending: deque = deque()
        try:
            for start in starts:
                pending.append((start, pool.submit(decode_chunk, paths[start : start + chunk].tolist(),
                                                   settings.image_size, settings.channels)))
                if len(pending) >= 2 * workers:
                    _drain_one(pending, write, bad)
            while pending:
                _drain_one(pending, write, bad)
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)  # stop at the first error, not after every chunk
            raise
    return bad


def _drain_one(pending: deque, write, bad: dict[int, str]) -> None:
    start, future = pending.popleft()
    records, chunk_bad = future.result()
    write(start, records)
    bad.update({start + offset: reason for offset, reason in chunk_bad.items()})


def decode_chunk(paths: list[str], size: int, channels: int) -> tuple[np.ndarray, dict[int, str]]:
    """Images of ``paths`` (zeros where bad) and the bad offsets with their reasons. Only files that are
    not usable images are bad; any other error (``ImageReadError``, ``MemoryError``, ...) propagates."""
    records = np.zeros((len(paths), channels, size, size), dtype=np.uint8)
    bad = {}
    for offset, path in enumerate(paths):
        try:
            records[offset] = decode_image_file(path, size, channels)
        except ImageDecodeError as error:
            bad[offset] = str(error)
    return records, bad
