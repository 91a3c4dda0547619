"""The shard cache: every image of a file collection decoded once, as fixed-size uint8 records on disk.

Rules:
* a cache is a folder ``<cache root>/<key>``; the key is a SHA-256 over every file's path, size and
  modification time and the decode settings (size, channels), so any change to the collection or
  the settings gives a new cache, and every job and trial on a node that asks for the same
  collection shares one;
* record ``i`` is file ``i`` of the listing, ``C*H*W`` bytes, in shard file ``i // per_shard`` at
  offset ``(i % per_shard) * record_bytes``; a file that could not be decoded keeps a zero record
  and is listed in ``cache.json`` with its reason;
* a cache is built in a temporary folder of a unique name beside it (``.<key>.partial-<random>``:
  builders in several containers sharing the cache never share one) under an exclusive lock
  (``<key>.lock``), and renamed into place with ``cache.json`` inside, every file and the folders
  fsynced first (``workers.storage.durable_write.created_durably``): a cache folder is complete or
  absent, and a second builder waits for the first instead of decoding again. A complete cache is
  read without the lock (it only ever appears whole), so readers never wait for one another or
  for a build of another key; the lock is taken only to build. Temporary folders a killed builder
  left are removed by the next builder of that key once they are a day old;
* who may have written a cache is checked before anything is read from it
  (``workers.datasets.cache_trust``: owner, group, mode, no symbolic links), and ``cache.json`` must
  say what the key says: this format, the folder's key, the record count and shape, bad positions
  within the count, and every shard file of its full size; anything else is refused;
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from workers.datasets.cache_trust import CacheTrust, checked_entry, create_private, open_checked, open_lock, prepare_root
from workers.datasets.errors import DataError
from workers.storage.durable_write import created_durably, partial_folders_of
from workers.storage.cache_home import cmpnas_cache_home

CACHE_FORMAT = 2  # 2: cache.json names its key; folders and files are checked by cache_trust
CACHE_FILE = "cache.json"
SHARD_BYTES = 256 * 2**20  # per shard file; any size works, this keeps the file count small
MAX_READ_BYTES = 64 * 2**20  # per pread call
MAX_CACHE_FILE_BYTES = 64 * 2**20  # a cache.json lists bad files with reasons: large for a bad collection, never this
STALE_PARTIAL_S = 24 * 3600  # a temporary folder this old is a killed builder's, not one at work


def default_cache_root() -> Path:
    return cmpnas_cache_home() / "shards"


@dataclass(frozen=True)
class CacheLayout:
    folder: Path
    record_shape: tuple[int, int, int]
    count: int
    trust: CacheTrust = field(default_factory=CacheTrust)

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

    def shard_records(self, shard: int) -> int:
        return min(self.per_shard, self.count - shard * self.per_shard)

    @property
    def lock_path(self) -> Path:
        return self.folder.with_name(self.folder.name + ".lock")


class ShardWriter:
    """Writes records at their positions, in any order (decoding finishes out of order), into new private
    shard files of ``folder``; ``created_durably`` fsyncs them."""

    def __init__(self, layout: CacheLayout, folder: Path):
        self.layout, self.folder = layout, folder
        self.fds = []
        for shard in range(layout.shards):
            fd = create_private(layout.shard_path(shard, folder), os.O_RDWR, layout.trust.file_mode, layout.trust)
            self.fds.append(fd)
            os.ftruncate(fd, layout.shard_records(shard) * layout.record_bytes)

    def write(self, start: int, records: np.ndarray) -> None:
        """``records`` (uint8, n x C x H x W) become records ``start`` ... ``start + n - 1``."""
        layout = self.layout
        position = start
        while position < start + len(records):
            shard, offset = divmod(position, layout.per_shard)
            take = min(start + len(records) - position, layout.per_shard - offset)
            chunk = np.ascontiguousarray(records[position - start : position - start + take])
            write_all(self.fds[shard], memoryview(chunk).cast("B"), offset * layout.record_bytes)
            position += take

    def close(self) -> None:
        for fd in self.fds:
            os.close(fd)
        self.fds = []


def write_all(fd: int, data: memoryview, offset: int) -> None:
    """``data`` at ``offset``, however few bytes each ``pwrite`` takes (a signal, a network file system)."""
    while len(data):
        written = os.pwrite(fd, data, offset)
        if written <= 0:
            raise OSError(f"pwrite wrote nothing at offset {offset} with {len(data)} bytes left")
        data, offset = data[written:], offset + written


@contextmanager
def exclusive_lock(path: Path, trust: CacheTrust) -> Iterator[None]:
    descriptor = open_lock(path, trust)
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX)
        yield
    finally:
        os.close(descriptor)  # closing releases the lock


def read_cache_record(layout: CacheLayout) -> dict[str, Any] | None:
    """What ``cache.json`` of a complete cache says, or None when the cache is absent or of another format.
    A cache that fails the trust check or whose record contradicts its key is refused (module rules).
    Any other failure to read it (permissions, too many open files, I/O) is an error, never "absent":
    an absent cache is rebuilt, which replaces the folder other readers may be using."""
    path = layout.folder / CACHE_FILE
    try:
        if checked_entry(layout.folder, layout.trust) is None:
            return None
        descriptor = open_checked(path, os.O_RDONLY, layout.trust)
        if descriptor is None:
            return None
        with os.fdopen(descriptor, "rb") as handle:
            text = handle.read(MAX_CACHE_FILE_BYTES + 1)
    except OSError as error:
        raise DataError(f"cannot read the shard cache's {path} ({error}); check the permissions of "
                        "data.cache_dir and the open-file limit (ulimit -n)") from error
    try:
        record = json.loads(text)
    except ValueError:
        return None  # a cache.json of another format or a torn one: built again under the lock
    if not isinstance(record, dict) or record.get("format") != CACHE_FORMAT:
        return None
    problem = record_problem(record, layout)
    if problem is not None:
        raise DataError(f"the shard cache {layout.folder} is not the cache its key names ({problem}); delete the "
                        "folder to rebuild it")
    return record


def record_problem(record: dict[str, Any], layout: CacheLayout) -> str | None:
    """What in a cache.json (of this format) or the folder contradicts ``layout``, or None."""
    expected = {"key": layout.folder.name, "count": layout.count, "record_shape": list(layout.record_shape)}
    for name, value in expected.items():
        if record.get(name) != value:
            return f"{CACHE_FILE} says {name} {record.get(name)!r}, the key says {value!r}"
    bad = record.get("bad")
    if not isinstance(bad, dict) or not all(
            isinstance(position, str) and position.isdigit() and int(position) < layout.count
            and isinstance(reason, str) for position, reason in bad.items()):
        return f"{CACHE_FILE}'s bad files are not positions below {layout.count} with reasons"
    for shard in range(layout.shards):
        status = checked_entry(layout.shard_path(shard), layout.trust)
        size = layout.shard_records(shard) * layout.record_bytes
        if status is None or status.st_size != size:
            return f"{layout.shard_path(shard).name} is {'missing' if status is None else 'of another size'}"
    return None


def build_cache(layout: CacheLayout, fill: Callable[[ShardWriter], dict[int, str]], description: str
                ) -> dict[str, Any]:
    """The cache of ``layout``, built by ``fill`` (which writes every record and returns the bad
    positions with their reasons) unless a complete one is there; see the module's rules."""
    prepare_root(layout.folder.parent, layout.trust)
    record = read_cache_record(layout)  # complete: read without the lock, as it only ever appears whole
    if record is not None:
        return record
    with exclusive_lock(layout.lock_path, layout.trust):
        record = read_cache_record(layout)
        if record is not None:
            return record
        _remove_stale_partials(layout)
        # A folder there now is an incomplete cache of another format: created_durably replaces it.
        with created_durably(layout.folder, layout.trust.folder_mode) as partial:
            if layout.trust.gid is not None:
                os.chown(partial, -1, layout.trust.gid)
            writer = ShardWriter(layout, partial)
            try:
                bad = fill(writer)
            finally:
                writer.close()
            record = {"format": CACHE_FORMAT, "key": layout.folder.name, "count": layout.count,
                      "record_shape": list(layout.record_shape),
                      "bad": {str(position): reason for position, reason in sorted(bad.items())},
                      "description": description, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            _write_cache_file(partial / CACHE_FILE, json.dumps(record).encode(), layout.trust)
        return record


def _write_cache_file(path: Path, data: bytes, trust: CacheTrust) -> None:
    descriptor = create_private(path, os.O_WRONLY, trust.file_mode, trust)
    try:
        write_all(descriptor, memoryview(data), 0)
    finally:
        os.close(descriptor)


def _remove_stale_partials(layout: CacheLayout) -> None:
    """Temporary folders of this key a killed builder left (a day old; this user's, or trusted)."""
    for partial in partial_folders_of(layout.folder):
        try:
            status = partial.lstat()
        except FileNotFoundError:  # its builder removed it meanwhile
            continue
        if time.time() - status.st_mtime > STALE_PARTIAL_S and layout.trust.problem(status) is None:
            shutil.rmtree(partial, ignore_errors=True)


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
        fd = self.fds[path] = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
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
        if read_cache_record(self.layout) is not None:
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
