"""Files that are either whole or absent, and that survive a power cut once written.

``replaced_durably(path)`` gives a temporary path of a unique name in ``path``'s folder (two
writers of one file never share a temporary); when the block ends it fsyncs that file, renames it
over ``path`` and fsyncs the folder, so the rename itself is on disk. If the block raises, the
temporary is removed and ``path`` is as it was. Every file cmpnas replaces goes through it: the
search state, gallery and supernet checkpoints, ``cmpnas gallery embed``'s shards, listing,
``embeddings.npy``, ``ids.txt``, FAISS index and ``gallery.json``.

``created_durably(folder)`` does the same for a folder of files written once (the shard cache): a
temporary folder of a unique name beside ``folder`` (``.<name>.partial-<random>``: two builders,
in one container or several sharing the folder, never share one); when the block ends every file
in it and the folder itself are fsynced, it is renamed to ``folder`` (a folder already there is
moved aside first and removed after) and the parent is fsynced. If the block raises, the
temporary folder is removed. ``partial_folders_of(folder)`` lists such temporaries, e.g. the ones
a killed builder left.

``fsync_path`` and ``fsync_tree`` make files written in place durable before something else
points at them: a staged journal artifact before its journal entry, an export folder before it is
renamed into place.
"""

from __future__ import annotations

import os
import shutil
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


@contextmanager
def created_durably(folder: str | Path, mode: int = 0o700) -> Iterator[Path]:
    """Fill the yielded temporary folder (made with ``mode``); it becomes ``folder`` atomically and durably."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    temporary = Path(tempfile.mkdtemp(dir=folder.parent, prefix=_PARTIAL_PREFIX.format(name=folder.name)))
    try:
        os.chmod(temporary, mode)  # mkdtemp's 0700 is only right for a private folder
        yield temporary
        for entry in temporary.iterdir():
            if entry.is_file() and not entry.is_symlink():
                _fsync(entry, os.O_RDONLY)
        _fsync(temporary, os.O_RDONLY)
        _rename_over(temporary, folder)
    except BaseException:
        shutil.rmtree(temporary, ignore_errors=True)
        raise
    _fsync(folder.parent, os.O_RDONLY)


def partial_folders_of(folder: str | Path) -> list[Path]:
    """The temporary folders ``created_durably(folder)`` made that are still there (a builder at work, or killed)."""
    folder = Path(folder)
    return sorted(folder.parent.glob(f"{_PARTIAL_PREFIX.format(name=folder.name)}*"))


_PARTIAL_PREFIX = ".{name}.partial-"


def _rename_over(temporary: Path, folder: Path) -> None:
    """``temporary`` renamed to ``folder``; a folder there already (rename cannot replace a full one) is moved
    aside to a unique name first and removed once the new one is in place."""
    aside = None
    if folder.exists() or folder.is_symlink():
        aside = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.old-"))
        os.rename(folder, aside / folder.name)
    os.rename(temporary, folder)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


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
