"""One cmpnas job at a time per ``output_dir``: an exclusive ``flock`` on ``OUTPUT_DIR/.cmpnas.lock``.

Search, resume, sync, gallery training and supernet training all write the search state, the
journal or the checkpoints in ``output_dir``; two drivers on one folder would interleave them.
Rules:
* the lock is taken before anything in the folder is read or written, and held until the job
  ends; a second job on the folder is refused at once (``OutputDirLockedError``) with the holder's
  command, process id and host, which the lock file records;
* the kernel releases the lock when the holding process dies, however it dies (SIGKILL, OOM,
  preemption), so a killed driver never leaves the folder blocked and a resume needs no cleanup.
  On a network volume (NFS, EFS) whose client machine is lost, the server frees it only when its
  lease expires (about 90 s on NFSv4): a job that expects that case (``cmpnas search
  --resume-if-unfinished``, a re-applied RayJob) waits up to ``wait_s`` for the lock;
* inside one process the lock is re-entrant (a search that trains its gallery model first takes
  it once): ``flock`` locks belong to an open file, and a second open in the same process would
  conflict with the first;
* the descriptor is not inherited by the processes a job starts (Ray's, by ``exec``), so none of
  them holds the folder after the job has gone. ``flock`` is advisory and, on NFS, only as good as
  the server's lock support: put ``output_dir`` on a local disk or a volume with working locks.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from orchestrator.common.credentials import redact_text
from search_space.errors import CmpnasError

logger = logging.getLogger(__name__)
LOCK_FILE = ".cmpnas.lock"
LOCK_POLL_S = 5.0


class OutputDirLockedError(CmpnasError, RuntimeError):
    """Another cmpnas job holds ``output_dir``."""


_held: dict[Path, tuple[int, int]] = {}  # folder -> (descriptor, depth)
_held_guard = threading.Lock()


@contextmanager
def locked_output_dir(output_dir: str | Path, job: str, wait_s: float = 0.0,
                      option: str = "output_dir") -> Iterator[Path]:
    """Hold ``output_dir`` for ``job`` (e.g. ``"cmpnas search"``) while the block runs; a lock held
    elsewhere is waited for up to ``wait_s`` seconds, then refused. ``option``: what the user sets to
    choose the folder (``output_dir``, ``--output``), named in the refusal."""
    folder = Path(output_dir).resolve()
    with _held_guard:
        if folder in _held:
            descriptor, depth = _held[folder]
            _held[folder] = (descriptor, depth + 1)
            reentered = True
        else:
            reentered = False
    if not reentered:
        folder.mkdir(parents=True, exist_ok=True)
        descriptor = _acquire(folder, job, wait_s, option)
        with _held_guard:
            _held[folder] = (descriptor, 1)
    try:
        yield folder
    finally:
        with _held_guard:
            descriptor, depth = _held[folder]
            if depth > 1:
                _held[folder] = (descriptor, depth - 1)
            else:
                del _held[folder]
                os.close(descriptor)  # releases the lock


def _acquire(folder: Path, job: str, wait_s: float, option: str) -> int:
    path = folder / LOCK_FILE
    descriptor = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    deadline = time.monotonic() + wait_s
    try:
        while True:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise
                logger.warning("%s=%s is held by %s; waiting up to %.0f s more", option, folder,
                               _read_holder(descriptor), deadline - time.monotonic())
                time.sleep(min(LOCK_POLL_S, max(0.0, deadline - time.monotonic())))
    except BlockingIOError:
        holder = _read_holder(descriptor)
        os.close(descriptor)
        raise OutputDirLockedError(
            f"{option}={str(folder)!r} is in use by another cmpnas job ({holder}); one job at a time may use a "
            f"folder. Wait for it to end (or stop it), or set {option} to another folder"
        ) from None
    except BaseException:
        os.close(descriptor)
        raise
    # The command line may carry a URI with credentials (--set tracking.uri=...): stored redacted.
    holder = json.dumps({"job": job, "pid": os.getpid(), "host": socket.gethostname(),
                         "argv": [redact_text(argument) for argument in sys.argv[:8]]})
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, holder.encode(), 0)
    return descriptor


def _read_holder(descriptor: int) -> str:
    try:
        record = json.loads(os.pread(descriptor, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        record = {}
    if not record:
        return "holder unknown"
    return f"{record.get('job', '?')}, pid {record.get('pid', '?')} on {record.get('host', '?')}"
