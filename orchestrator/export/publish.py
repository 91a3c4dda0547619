"""Where ``cmpnas export`` puts checked candidates: one export at a time per folder, swapped in whole.

Rules:
* an export holds its output folder (``--output``, default ``OUTPUT_DIR/export``) with the output
  lock (``orchestrator.common.output_lock``) from its first write there to its end; a second
  export into the folder is refused at once, naming the holder;
* candidates are packaged and checked in ``.staging-*`` inside the folder (same file system, so
  moving one in is a rename); a staged candidate is fsynced, files and folders, before it moves;
* a candidate replacing an earlier export of the same architecture never leaves the folder
  without one: the old folder is renamed aside (into ``.replaced-*``), the new one renamed in, the
  folder fsynced, and only then is the old one deleted;
* what a crash leaves (a killed export, a power cut) is put right by the next export into the
  folder, under the lock (so nothing of a running export is touched): ``.staging-*`` folders are
  deleted, and an old export renamed aside whose replacement never arrived is renamed back.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

from orchestrator.common.output_lock import locked_output_dir
from workers.storage.durable_write import fsync_path, fsync_tree

STAGING_PREFIX = ".staging-"
REPLACED_PREFIX = ".replaced-"


@contextmanager
def staging_in(output_dir: Path, log: Callable[[str], None]) -> Iterator[Path]:
    """A fresh staging folder in ``output_dir``, held with the output lock while the block runs;
    what an interrupted export left there is put right first."""
    with locked_output_dir(output_dir, "cmpnas export", option="--output"):
        recover_interrupted(output_dir, log)
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=output_dir))
        try:
            yield staging
        finally:
            shutil.rmtree(staging, ignore_errors=True)


def swap_in(staged: Path, final: Path) -> None:
    """Make ``staged`` (a folder beside ``final``) be ``final``, durably; an existing ``final`` is
    replaced without a moment where neither is on disk after a crash."""
    fsync_tree(staged)
    aside = None
    if final.exists():
        aside = Path(tempfile.mkdtemp(prefix=REPLACED_PREFIX, dir=final.parent)) / final.name
        final.rename(aside)
    staged.rename(final)
    fsync_path(final.parent)
    if aside is not None:
        shutil.rmtree(aside.parent)


def recover_interrupted(output_dir: Path, log: Callable[[str], None]) -> None:
    """Put an output folder right after a crash; only with the folder's lock held."""
    changed = False
    for replaced in sorted(output_dir.glob(REPLACED_PREFIX + "*")):
        for old in sorted(replaced.iterdir()):
            target = output_dir / old.name
            if not target.exists():  # the crash came between the two renames: the old export comes back
                old.rename(target)
                log(f"restored {target}: an interrupted export had moved it aside")
        shutil.rmtree(replaced)
        changed = True
    for staging in sorted(output_dir.glob(STAGING_PREFIX + "*")):
        shutil.rmtree(staging)
        log(f"removed {staging}, left by an interrupted export")
        changed = True
    if changed:
        fsync_path(output_dir)
