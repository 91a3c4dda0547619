"""Whom the shard cache trusts: a cache is read only when nobody but its user (or a named team) could have written it.

``data.cache_dir`` may be a folder that other users or containers can reach, and cache keys are
predictable (anyone who can list the files can compute one), so the rule below, not the key,
keeps another user's records out of a search. Rules:

* an entry of the cache (the cache root, a cache folder, its lock, ``cache.json``, a shard file) is
  trusted when it is owned by this process's user or by root, or its group is the trusted group
  (``data.cache_trusted_group``), and nobody else can write it: never writable by every user, and
  writable by its group only when that group is the trusted group. The cache root alone may be
  writable by others when it has the sticky bit (as ``/tmp``): then nobody else can rename or
  remove this user's entries, and an entry another user makes in it fails the rule;
* a cache folder, its lock and its files are never symbolic links (checked with ``lstat``, opened
  with ``O_NOFOLLOW``): a link could send a builder's writes, or a reader's records, to any file;
* what cmpnas writes is private: folders 0700, files 0600. With a trusted group the team must read
  and build one another's caches: folders 0750 (the cache root 2770, so new entries inherit the
  group), lock files 0660 (a member takes the lock of another's build) and data files 0640, all
  given that group. The user must belong to the group;
* an untrusted entry is refused with a ``DataError`` naming it, its owner, group and mode, and the
  fix; nothing is read from it or written into it.
"""

from __future__ import annotations

import errno
import grp
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from workers.datasets.errors import DataError

logger = logging.getLogger(__name__)

OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class CacheTrust:
    """Who may have written a cache besides this user and root: nobody, or the members of ``group``."""

    group: str | None = None

    @property
    def gid(self) -> int | None:
        return None if self.group is None else group_id(self.group)

    @property
    def folder_mode(self) -> int:
        return 0o750 if self.group else 0o700

    @property
    def root_mode(self) -> int:
        return 0o2770 if self.group else 0o700

    @property
    def file_mode(self) -> int:
        return 0o640 if self.group else 0o600

    @property
    def lock_mode(self) -> int:
        return 0o660 if self.group else 0o600

    def problem(self, status: os.stat_result, root: bool = False) -> str | None:
        """Why an entry with ``status`` is not trusted (module rules), or None when it is."""
        gid = self.gid
        in_group = gid is not None and status.st_gid == gid
        if status.st_uid not in (os.geteuid(), 0) and not in_group:
            return "owned by another user"
        if root and status.st_mode & stat.S_ISVTX:
            return None  # sticky: others may add entries, never touch this user's
        if status.st_mode & stat.S_IWOTH:
            return "writable by every user"
        if status.st_mode & stat.S_IWGRP and not in_group:
            return "writable by its group"
        return None

    def check(self, path: Path, status: os.stat_result, root: bool = False) -> None:
        problem = self.problem(status, root)
        if problem is not None:
            raise untrusted(path, problem, status, self)

    def adopt(self, descriptor: int, mode: int) -> None:
        """Give a file or folder this process made ``mode`` (whatever the umask) and, with a trusted group, the group."""
        if self.gid is not None:
            os.fchown(descriptor, -1, self.gid)
        os.fchmod(descriptor, mode)


def untrusted(path: Path, problem: str, status: os.stat_result, trust: CacheTrust) -> DataError:
    group = f"data.cache_trusted_group={trust.group!r}" if trust.group else "data.cache_trusted_group is not set"
    return DataError(
        f"the shard cache's {path} is {problem} (owner uid {status.st_uid}, group gid {status.st_gid}, mode "
        f"{stat.S_IMODE(status.st_mode):o}; {group}): cmpnas reads a cache only when no other user could have "
        "written it. Use a data.cache_dir of your own (or remove the entry, or chmod go-w it), or, for a team's "
        "shared cache, set data.cache_trusted_group to the group that may write it and give the cache that group"
    )


def group_id(name: str) -> int:
    """The id of the trusted group, which must exist and include this process (or the process is root)."""
    try:
        gid = grp.getgrnam(name).gr_gid
    except KeyError:
        raise DataError(f"data.cache_trusted_group={name!r} is not a group on this machine; name an existing group "
                        "(getent group) or leave it unset for a cache of your own") from None
    if os.geteuid() != 0 and gid not in (os.getegid(), *os.getgroups()):
        raise DataError(f"data.cache_trusted_group={name!r}: this user is not a member of the group, so it could not "
                        "give the cache that group; add the user to it (newgrp) or leave the field unset")
    return gid


def checked_entry(path: Path, trust: CacheTrust) -> os.stat_result | None:
    """``lstat`` of a cache folder or file after the trust check; None when absent; a symbolic link is refused."""
    try:
        status = path.lstat()
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(status.st_mode):
        raise untrusted(path, "a symbolic link", status, trust)
    trust.check(path, status)
    return status


def open_checked(path: Path, flags: int, trust: CacheTrust) -> int | None:
    """A descriptor of an existing cache file (never through a symbolic link) after the trust check; None when absent."""
    try:
        descriptor = os.open(path, flags | OPEN_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise untrusted(path, "a symbolic link", path.lstat(), trust) from None
        raise
    try:
        trust.check(path, os.fstat(descriptor))
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def create_private(path: Path, flags: int, mode: int, trust: CacheTrust) -> int:
    """A descriptor of a new cache file (``O_EXCL``: never one that is there, nor a link), with ``mode`` and the group."""
    descriptor = os.open(path, flags | os.O_CREAT | os.O_EXCL | OPEN_FLAGS, mode)
    try:
        trust.adopt(descriptor, mode)
    except BaseException:
        os.close(descriptor)
        raise
    return descriptor


def open_lock(path: Path, trust: CacheTrust) -> int:
    """The lock file of a cache: made private if new, else checked; a symbolic link is refused (``O_NOFOLLOW``)."""
    try:
        return create_private(path, os.O_RDWR, trust.lock_mode, trust)
    except FileExistsError:
        pass
    descriptor = open_checked(path, os.O_RDWR, trust)
    if descriptor is None:  # removed in between: make it again
        return create_private(path, os.O_RDWR, trust.lock_mode, trust)
    return descriptor


def _own_group_writable_root(status: os.stat_result, trust: CacheTrust) -> bool:
    return (trust.group is None and status.st_uid == os.geteuid() and bool(status.st_mode & stat.S_IWGRP)
            and not status.st_mode & stat.S_IWOTH)


def prepare_root(root: Path, trust: CacheTrust) -> None:
    """The cache root, made (with ``trust.root_mode``) if absent, else checked (module rules)."""
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(root, trust.root_mode)
    except FileExistsError:
        status = root.stat()
        if _own_group_writable_root(status, trust):
            # cmpnas 0.2.0 made the root with the umask's mode: 0775 under umask 002, common where each user
            # has a private group. The root is this user's: it takes the private mode; every entry in it is
            # still checked on its own, so one a group member put there is refused.
            logger.warning("the shard cache root %s was writable by its group (mode %o); made private (%o)", root,
                           stat.S_IMODE(status.st_mode), trust.root_mode)
            os.chmod(root, stat.S_IMODE(status.st_mode) & ~stat.S_IWGRP)
            status = root.stat()
        trust.check(root, status, root=True)
        return
    descriptor = os.open(root, os.O_RDONLY | os.O_DIRECTORY | OPEN_FLAGS)
    try:
        trust.adopt(descriptor, trust.root_mode)
    finally:
        os.close(descriptor)
