"""A durably replaced file (or folder) is whole or as it was, and leaves no temporary behind."""

import pytest

from workers.storage.durable_write import created_durably, partial_folders_of, replaced_durably, write_text_durably


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "state.json"
    write_text_durably(path, "old")
    with pytest.raises(RuntimeError):
        with replaced_durably(path) as temporary:
            temporary.write_text("half")
            raise RuntimeError("killed mid-write")
    assert path.read_text() == "old"
    assert [entry.name for entry in tmp_path.iterdir()] == ["state.json"]


def test_two_writers_of_one_file_get_their_own_temporaries(tmp_path):
    path = tmp_path / "gallery.safetensors"
    with replaced_durably(path) as first, replaced_durably(path) as second:
        assert first != second and first.parent == second.parent == tmp_path
        first.write_text("first")
        second.write_text("second")
    assert path.read_text() == "first"  # the outer block ends last: its file is the one kept
    assert [entry.name for entry in tmp_path.iterdir()] == ["gallery.safetensors"]


def test_a_new_file_gets_the_umasks_mode_and_a_replaced_one_keeps_its_own(tmp_path):
    import os

    path = tmp_path / "checkpoint.safetensors"
    write_text_durably(path, "new")
    umask = os.umask(0o022)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600: other users may read it
    path.chmod(0o640)
    write_text_durably(path, "replaced")
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_folder_is_created_whole_or_not_at_all_with_a_temporary_of_its_own(tmp_path):
    folder = tmp_path / "cache-key"
    with pytest.raises(RuntimeError):
        with created_durably(folder) as temporary:
            (temporary / "records.u8").write_bytes(b"half")
            raise RuntimeError("killed mid-build")
    assert list(tmp_path.iterdir()) == []
    with created_durably(folder, mode=0o750) as first, created_durably(folder) as second:
        assert first != second and first.parent == second.parent == tmp_path
        assert partial_folders_of(folder) == sorted([first, second])
        assert first.stat().st_mode & 0o777 == 0o750
        (first / "records.u8").write_bytes(b"first")
        (second / "records.u8").write_bytes(b"second")
    # The inner block ended first and its folder was moved aside when the outer one replaced it.
    assert [entry.name for entry in tmp_path.iterdir()] == ["cache-key"]
    assert (folder / "records.u8").read_bytes() == b"first"
