"""The shard cache in a folder others can reach: private files, caches of other users or writable by
others refused (a trusted group aside), no symbolic links followed, cache.json checked against its
key, complete caches read without the build lock, whole writes and unique temporaries."""

from __future__ import annotations

import fcntl
import grp
import json
import os
import stat
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workers.datasets import DataError
from workers.datasets.decoding import CACHE_KEY_VERSION, DecodeSettings, decode_files
from workers.datasets.image_folder import list_image_folder

SIZE = 10
OTHER_USER = 65534  # nobody


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("trust") / "images"
    rng = np.random.default_rng(0)
    for label in range(2):
        (root / f"class_{label}").mkdir(parents=True)
        for index in range(5):
            Image.fromarray(rng.integers(0, 256, (14, 14), dtype=np.uint8)).save(root / f"class_{label}" / f"{index}.png")
    return root


def _decode(images: Path, cache: Path, group: str | None = None):
    return decode_files(list_image_folder(images), DecodeSettings(SIZE, 1, streaming=True, cache_root=str(cache),
                                                                  workers=1, cache_trusted_group=group))


def _key(images: Path) -> str:
    return list_image_folder(images).content_key(CACHE_KEY_VERSION, (1, SIZE, SIZE))


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def _own_group() -> str:
    return grp.getgrgid(os.getegid()).gr_name


def test_the_cache_is_private_to_its_user(images, tmp_path):
    cache = tmp_path / "cache"
    _decode(images, cache)
    key = _key(images)
    assert _mode(cache) == 0o700 and _mode(cache / key) == 0o700
    files = [cache / f"{key}.lock", *sorted((cache / key).iterdir())]
    assert {path.name for path in files[1:]} == {"cache.json", "records-00000.u8"}
    assert {path.name: _mode(path) for path in files} == {path.name: 0o600 for path in files}


def test_a_trusted_group_gets_group_readable_files_and_a_group_lock(images, tmp_path):
    cache, group = tmp_path / "cache", _own_group()
    _decode(images, cache, group)
    key, gid = _key(images), grp.getgrnam(group).gr_gid
    assert _mode(cache) == 0o2770 and _mode(cache / key) == 0o750 and _mode(cache / f"{key}.lock") == 0o660
    assert all(_mode(path) == 0o640 for path in (cache / key).iterdir())
    assert all(path.lstat().st_gid == gid for path in [cache, *cache.iterdir(), *(cache / key).iterdir()])


def test_an_unknown_trusted_group_is_refused_naming_the_field(images, tmp_path):
    with pytest.raises(DataError, match="data.cache_trusted_group='no-such-group-h27' is not a group"):
        _decode(images, tmp_path / "cache", "no-such-group-h27")


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a cache to another user needs root")
def test_a_cache_another_user_owns_is_refused(images, tmp_path):
    """E.g. one planted under the predictable key before this user's first search."""
    cache = tmp_path / "cache"
    _decode(images, cache)
    for path in (cache / _key(images)).iterdir():
        os.chown(path, OTHER_USER, -1)
    os.chown(cache / _key(images), OTHER_USER, -1)
    with pytest.raises(DataError, match=r"is owned by another user \(owner uid 65534.*data.cache_trusted_group"):
        _decode(images, cache)


def test_caches_writable_by_others_are_refused_and_a_trusted_groups_are_read(images, tmp_path):
    cache = tmp_path / "cache"
    expected = np.asarray(_decode(images, cache).images)
    folder = cache / _key(images)
    (folder / "cache.json").chmod(0o606)
    with pytest.raises(DataError, match=r"cache.json is writable by every user .*mode 606"):
        _decode(images, cache)
    (folder / "cache.json").chmod(0o600)
    folder.chmod(0o770)
    with pytest.raises(DataError, match=r"is writable by its group .*data.cache_trusted_group is not set"):
        _decode(images, cache)
    os.chown(folder, -1, os.getegid())
    np.testing.assert_array_equal(np.asarray(_decode(images, cache, _own_group()).images), expected)
    cache.chmod(0o777)  # a cache root anyone may write, without the sticky bit
    with pytest.raises(DataError, match="is writable by every user"):
        _decode(images, cache, _own_group())


def test_a_symbolic_link_as_the_lock_is_refused_and_its_target_untouched(images, tmp_path):
    cache, victim = tmp_path / "cache", tmp_path / "victim.txt"
    cache.mkdir(mode=0o700)
    (cache / f"{_key(images)}.lock").symlink_to(victim)
    with pytest.raises(DataError, match=r"\.lock is a symbolic link"):
        _decode(images, cache)
    assert not victim.exists() and not (cache / _key(images)).exists()


def test_a_symbolic_link_as_the_cache_folder_is_refused(images, tmp_path):
    cache, elsewhere = tmp_path / "cache", tmp_path / "elsewhere"
    _decode(images, elsewhere)
    cache.mkdir(mode=0o700)
    (cache / _key(images)).symlink_to(elsewhere / _key(images))
    with pytest.raises(DataError, match="is a symbolic link"):
        _decode(images, cache)


@pytest.mark.parametrize("change, message", [
    (lambda record: record.update(count=3), "cache.json says count 3, the key says 10"),
    (lambda record: record.update(key="0" * 64), "cache.json says key '000"),
    (lambda record: record.update(record_shape=[3, SIZE, SIZE]), "says record_shape"),
    (lambda record: record.update(bad={"99": "x"}), "bad files are not positions below 10"),
])
def test_a_cache_json_that_contradicts_its_key_is_refused(images, tmp_path, change, message):
    cache = tmp_path / "cache"
    _decode(images, cache)
    path = cache / _key(images) / "cache.json"
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))
    with pytest.raises(DataError, match=f"is not the cache its key names .*{message}.*delete the folder"):
        _decode(images, cache)


def test_a_truncated_shard_is_refused(images, tmp_path):
    cache = tmp_path / "cache"
    _decode(images, cache)
    os.truncate(cache / _key(images) / "records-00000.u8", SIZE * SIZE * 3)
    with pytest.raises(DataError, match="records-00000.u8 is of another size"):
        _decode(images, cache)


def test_complete_caches_are_read_while_the_build_lock_is_held(images, tmp_path):
    """Readers never take the exclusive lock: a builder holding it (for minutes) does not stop them."""
    cache = tmp_path / "cache"
    expected = np.asarray(_decode(images, cache).images)
    read = []

    def reader():
        read.append(np.asarray(_decode(images, cache).images))

    with open(cache / f"{_key(images)}.lock") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        readers = [threading.Thread(target=reader) for _ in range(4)]
        for thread in readers:
            thread.start()
        deadline = time.monotonic() + 20
        for thread in readers:
            thread.join(timeout=max(0.0, deadline - time.monotonic()))
        done = len(read)
    for thread in readers:
        thread.join()
    assert done == 4 and all(np.array_equal(images_read, expected) for images_read in read)


def test_short_writes_are_completed(images, tmp_path, monkeypatch):
    """``pwrite`` may write fewer bytes than asked (a signal, a network file system): every byte still lands."""
    expected = np.asarray(decode_files(list_image_folder(images), DecodeSettings(SIZE, 1)).images)
    real_pwrite = os.pwrite
    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: real_pwrite(fd, memoryview(data)[:7], offset))
    streamed = _decode(images, tmp_path / "cache")
    monkeypatch.undo()
    np.testing.assert_array_equal(np.asarray(streamed.images), expected)


def test_builds_leave_other_builders_temporaries_alone_and_fsync_what_they_write(images, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    key = _key(images)
    # Another container's builder with this process's pid (the name cmpnas once used), and one at work.
    others = [cache / f"{key}.partial-{os.getpid()}", cache / f".{key}.partial-abc123"]
    stale = cache / f".{key}.partial-killed"
    for folder in [*others, stale]:
        folder.mkdir()
        (folder / "records-00000.u8").write_bytes(b"someone else's")
    day_ago = time.time() - 2 * 24 * 3600
    os.utime(stale, (day_ago, day_ago))
    synced = []
    real_fsync = os.fsync

    def fsync(descriptor):
        synced.append(os.readlink(f"/proc/self/fd/{descriptor}"))
        return real_fsync(descriptor)

    monkeypatch.setattr(os, "fsync", fsync)
    _decode(images, cache)
    monkeypatch.undo()
    assert all((folder / "records-00000.u8").read_bytes() == b"someone else's" for folder in others)
    assert not stale.exists()  # a killed builder's, a day old
    # Every file, the folder (under its temporary name) and the cache root are on disk before the build returns.
    assert {Path(path).name for path in synced} >= {"records-00000.u8", "cache.json", "cache"}
    assert any(Path(path).name.startswith(f".{key}.partial-") for path in synced)


def test_a_group_writable_root_of_this_users_own_is_made_private_and_its_entries_still_checked(images, tmp_path, caplog):
    """cmpnas 0.2.0 made the cache root 0775 under umask 002: it is read again, the root made private."""
    cache = tmp_path / "cache"
    expected = np.asarray(_decode(images, cache).images)
    cache.chmod(0o775)
    np.testing.assert_array_equal(np.asarray(_decode(images, cache).images), expected)
    assert stat.S_IMODE(cache.stat().st_mode) & stat.S_IWGRP == 0 and "made private" in caplog.text
    (cache / _key(images)).chmod(0o770)  # an entry inside is not repaired: it is refused
    with pytest.raises(DataError, match="is writable by its group"):
        _decode(images, cache)
