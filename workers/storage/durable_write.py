"""Files that are either whole or absent, and that survive a power cut once written.

``replaced_durably(path)`` gives a temporary path of a unique name in ``path``'s folder (two
writers of one file never share a temporary); when the block ends it fsyncs that file, renames it
over ``path`` and fsyncs the folder, so the rename itself is on disk. If the block raises, the
temporary is removed and ``path`` is as it was. Every file cmpnas replaces goes through it: the
search state, gallery and supernet checkpoints, ``cmpnas gallery embed``'s shards, listing,
``embeddings.npy``, ``ids.txt``, FAISS index and ``gallery.json``.

``fsync_path`` and ``fsync_tree`` make files written in place durable before something else
points at them: a staged journal artifact before its journal entry, an export folder before it is
renamed into place.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def replaced_durably(path: str | Path) -> Iterator[Path]:
    """Write to the yielded temporary path; it becomes ``path`` atomically and durably at the end."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    # mkstemp makes the file 0600; the file it replaces keeps its mode, a new one gets the umask's
    # (a serving container of another uid reads checkpoints and state).
    os.fchmod(handle, path.stat().st_mode & 0o777 if path.exists() else 0o666 & ~_umask())
    os.close(handle)
    temporary = Path(name)
    try:
        yield temporary
        _fsync(temporary, os.O_RDONLY)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _fsync(path.parent, os.O_RDONLY)


def write_text_durably(path: str | Path, text: str) -> None:
    with replaced_durably(path) as temporary:
        temporary.write_text(text)


def fsync_path(path: str | Path) -> None:
    """Flush a file's data, or a folder's entries (a file created or renamed in it), to the disk."""
    _fsync(Path(path), os.O_RDONLY)


def fsync_tree(folder: str | Path) -> None:
    """fsync every file and folder under ``folder``, folders after their contents, ``folder`` last."""
    for parent, _folders, files in os.walk(folder, topdown=False):
        for name in files:
            fsync_path(Path(parent) / name)
        fsync_path(parent)


def _umask() -> int:
    """The process's umask, read without changing it (``os.umask`` would, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def _fsync(path: Path, flags: int) -> None:
    descriptor = os.open(path, flags)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
