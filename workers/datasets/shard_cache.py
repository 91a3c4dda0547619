"""The shard cache: every image of a file collection decoded once, as fixed-size uint8 records on disk.

Rules:
* a cache is a folder ``<cache root>/<key>``; the key is a SHA-256 over every file's path, size and
  modification time and the decode settings (size, channels), so any change to the collection or
  the settings gives a new cache, and every job and trial on a node that asks for the same
  collection shares one;
* record ``i`` is file ``i`` of the listing, ``C*H*W`` bytes, in shard file ``i // per_shard`` at
  offset ``(i % per_shard) * record_bytes``; a file that could not be decoded keeps a zero record
  and is listed in ``cache.json`` with its reason;
* a cache is built in a ``.partial`` folder under an exclusive lock (``<key>.lock``) and renamed
  into place with ``cache.json`` inside: a cache folder is complete or absent, and a second
  builder waits for the first instead of decoding again;
* readers (``ShardedImages``) read records with ``os.pread``: the pages live in the node's page
  cache, shared by every process, and no process holds the collection in its own memory. A reader
  on a node without the cache builds it there from the same files (which must be at the same
  path on every node, as for any file collection on a cluster).
"""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from workers.datasets.errors import DataError

CACHE_FORMAT = 1
CACHE_FILE = "cache.json"
SHARD_BYTES = 256 * 2**20  # per shard file; any size works, this keeps the file count small
MAX_READ_BYTES = 64 * 2**20  # per pread call


def default_cache_root() -> Path:
    return Path(os.environ.get("CMPNAS_CACHE", Path.home() / ".cache" / "cmpnas")) / "shards"


@dataclass(frozen=True)
class CacheLayout:
    folder: Path
    record_shape: tuple[int, int, int]
    count: int

    @property
    def record_bytes(self) -> int:
        channels, height, width = self.record_shape
        return channels * height * width

    @property
    def per_shard(self) -> int:
        return max(1, SHARD_BYTES // self.record_bytes)

    def shard_path(self, shard: int, folder: Path | None = None) -> Path:
        return (folder or self.folder) / f"records-{shard:05d}.u8"

    @property
    def shards(self) -> int:
        return -(-self.count // self.per_shard)


class ShardWriter:
    """Writes records at their positions, in any order (decoding finishes out of order)."""

    def __init__(self, layout: CacheLayout, folder: Path):
        self.layout, self.folder = layout, folder
        self.fds = []
        for shard in range(layout.shards):
            records = min(layout.per_shard, layout.count - shard * layout.per_shard)
            fd = os.open(layout.shard_path(shard, folder), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
            os.ftruncate(fd, records * layout.record_bytes)
            self.fds.append(fd)

    def write(self, start: int, records: np.ndarray) -> None:
        """``records`` (uint8, n x C x H x W) become records ``start`` ... ``start + n - 1``."""
        layout = self.layout
        position = start
        while position < start + len(records):
            shard, offset = divmod(position, layout.per_shard)
            take = min(start + len(records) - position, layout.per_shard - offset)
            chunk = np.ascontiguousarray(records[position - start : position - start + take])
            os.pwrite(self.fds[shard], chunk.tobytes(), offset * layout.record_bytes)
            position += take

    def close(self) -> None:
        for fd in self.fds:
            os.fsync(fd)
            os.close(fd)
        self.fds = []


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def read_cache_record(folder: Path) -> dict[str, Any] | None:
    """What ``cache.json`` of a complete cache says, or None when the cache is absent or not this format.
    Any other failure to read it (permissions, too many open files, I/O) is an error, never "absent":
    an absent cache is rebuilt, which replaces the folder other readers may be using."""
    try:
        record = json.loads((folder / CACHE_FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        return None  # a cache.json of another format or a torn one: built again under the lock
    except OSError as error:
        raise DataError(f"cannot read the shard cache's {folder / CACHE_FILE} ({error}); check the permissions of "
                        "data.cache_dir and the open-file limit (ulimit -n)") from error
    return record if isinstance(record, dict) and record.get("format") == CACHE_FORMAT else None


def build_cache(folder: Path, record_shape: tuple[int, int, int], count: int,
                fill: Callable[[ShardWriter], dict[int, str]], description: str) -> dict[str, Any]:
    """The cache at ``folder``, built by ``fill`` (which writes every record and returns the bad
    positions with their reasons) unless a complete one is there; see the module's rules."""
    with exclusive_lock(folder.with_name(folder.name + ".lock")):
        record = read_cache_record(folder)
        if record is not None:
            return record
        partial = folder.with_name(f"{folder.name}.partial-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        layout = CacheLayout(folder, record_shape, count)
        try:
            writer = ShardWriter(layout, partial)
            try:
                bad = fill(writer)
            finally:
                writer.close()
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)  # an interrupted build leaves nothing behind
            raise
        record = {"format": CACHE_FORMAT, "count": count, "record_shape": list(record_shape),
                  "bad": {str(position): reason for position, reason in sorted(bad.items())},
                  "description": description, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        (partial / CACHE_FILE).write_text(json.dumps(record))
        shutil.rmtree(folder, ignore_errors=True)  # an incomplete cache of an older format
        os.rename(partial, folder)
        return record


class OpenShards:
    """This process's read-only descriptors of shard files, one per file whatever the number of views
    (splits, subsets, unpickled copies) reading it; a forked child starts its own table."""

    def __init__(self):
        self.fds: dict[Path, int] = {}
        self.pid = os.getpid()

    def get(self, path: Path) -> int | None:
        if self.pid != os.getpid():  # a forked child must not share the parent's descriptors
            self.fds, self.pid = {}, os.getpid()
        return self.fds.get(path)

    def open(self, path: Path) -> int:
        fd = self.fds[path] = os.open(path, os.O_RDONLY)
        return fd


_OPEN_SHARDS = OpenShards()


class ShardedImages:
    """Images of a shard cache, read on demand: behaves as a uint8 (N, C, H, W) array for ``len``,
    ``shape``, slicing and integer-array indexing (each returning a NumPy array), and ``take``
    gives a view of some records without reading them.

    ``rebuild`` (optional) rebuilds the cache on a node that does not have it; it is pickled with
    the reader, so it must be a picklable callable.
    """

    dtype = np.dtype(np.uint8)
    ndim = 4

    def __init__(self, layout: CacheLayout, positions: np.ndarray | None = None,
                 rebuild: Callable[[], Any] | None = None):
        self.layout = layout
        if positions is None:
            positions = np.arange(layout.count, dtype=np.int64)
        elif np.asarray(positions).dtype == bool:
            positions = np.flatnonzero(positions)
        self.positions = np.asarray(positions, dtype=np.int64)
        self.rebuild = rebuild
        self._checked = False  # whether this view has seen its cache on this node

    def __getstate__(self) -> dict[str, Any]:
        return {"layout": self.layout, "positions": self.positions, "rebuild": self.rebuild}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["layout"], state["positions"], state["rebuild"])

    def __len__(self) -> int:
        return len(self.positions)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.positions), *self.layout.record_shape)

    @staticmethod
    def concatenate(parts: list[ShardedImages]) -> ShardedImages:
        """The records of ``parts`` one after the other, read from their one cache."""
        if len({part.layout for part in parts}) != 1:
            raise ValueError("only views of one shard cache can be concatenated")
        return ShardedImages(parts[0].layout, np.concatenate([part.positions for part in parts]), parts[0].rebuild)

    def take(self, indices: np.ndarray) -> ShardedImages:
        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        return ShardedImages(self.layout, self.positions[indices.astype(np.int64)], self.rebuild)

    def __getitem__(self, key) -> np.ndarray:
        if isinstance(key, (int, np.integer)):
            return self._read(self.positions[[int(key)]])[0]
        if isinstance(key, slice):
            return self._read(self.positions[key])
        return self._read(self.positions[np.asarray(key)])

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        images = self._read(self.positions)
        return images if dtype is None else images.astype(dtype)

    def _fd(self, shard: int) -> int:
        if not self._checked:
            self._ensure_local()
            self._checked = True
        path = self.layout.shard_path(shard)
        fd = _OPEN_SHARDS.get(path)
        if fd is None:
            try:
                fd = _OPEN_SHARDS.open(path)
            except FileNotFoundError:
                raise DataError(f"the shard cache {self.layout.folder} has no {path.name}: it was removed while in "
                                "use; run again to rebuild it") from None
        return fd

    def _ensure_local(self) -> None:
        if read_cache_record(self.layout.folder) is not None:
            return
        if self.rebuild is None:
            raise DataError(f"the shard cache {self.layout.folder} is missing on this node and cannot be rebuilt "
                            "here; set data.cache_dir to a folder every node shares, or run on the node that built it")
        self.rebuild()

    def _read(self, positions: np.ndarray) -> np.ndarray:
        """Records at ``positions`` in that order; consecutive records of one shard are read together."""
        layout = self.layout
        out = np.empty((len(positions), *layout.record_shape), dtype=np.uint8)
        if len(positions) == 0:
            return out
        order = np.argsort(positions, kind="stable")
        ordered = positions[order]
        shards = ordered // layout.per_shard
        per_read = max(1, MAX_READ_BYTES // layout.record_bytes)
        breaks = np.flatnonzero((np.diff(ordered) != 1) | (np.diff(shards) != 0)) + 1
        starts = np.concatenate([[0], breaks])
        stops = np.concatenate([breaks, [len(ordered)]])
        for run_start, run_stop in zip(starts.tolist(), stops.tolist()):
            for first in range(run_start, run_stop, per_read):
                last = min(first + per_read, run_stop)
                position = int(ordered[first])
                shard, offset = divmod(position, layout.per_shard)
                size = (last - first) * layout.record_bytes
                data = os.pread(self._fd(shard), size, offset * layout.record_bytes)
                if len(data) != size:
                    raise DataError(f"shard cache {layout.folder} is truncated (shard {shard}); delete the folder "
                                    "to rebuild it")
                out[order[first:last]] = np.frombuffer(data, dtype=np.uint8).reshape(last - first,
                                                                                      *layout.record_shape)
        return out
