"""The export folder (``orchestrator.export.publish``) and the files a manifest lists (``read_manifest``),
on real folders: one export at a time, candidates swapped in whole, what a crash leaves put right."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.common.output_lock import LOCK_FILE, OutputDirLockedError
from orchestrator.export import ExportError
from orchestrator.export.package import MANIFEST_FILE, ONNX_FILE, read_manifest
from orchestrator.export.publish import REPLACED_PREFIX, STAGING_PREFIX, staging_in, swap_in
from workers.storage.file_digest import file_sha256


def _candidate(folder: Path, text: str) -> Path:
    folder.mkdir(parents=True)
    (folder / ONNX_FILE).write_text(text)
    return folder


def test_a_second_export_into_a_folder_in_use_is_refused_at_once(tmp_path):
    output = tmp_path / "export"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import time; from orchestrator.common.output_lock import locked_output_dir\n"
         f"with locked_output_dir({str(output)!r}, 'cmpnas export'):\n    print('held', flush=True); time.sleep(600)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        (output / f"{STAGING_PREFIX}running").mkdir()  # the running export's: never touched by the refused one
        with pytest.raises(OutputDirLockedError, match=rf"--output=.*cmpnas export, pid {holder.pid}.*another folder"):
            with staging_in(output, print):
                pass
        assert sorted(path.name for path in output.iterdir()) == [LOCK_FILE, f"{STAGING_PREFIX}running"]
    finally:
        holder.kill()
        holder.wait()


def test_a_replaced_export_is_swapped_whole_and_the_old_one_deleted_after(tmp_path):
    output = tmp_path / "export"
    _candidate(output / "arch", "old")
    with staging_in(output, print) as staging:
        swap_in(_candidate(staging / "arch", "new"), output / "arch")
    assert (output / "arch" / ONNX_FILE).read_text() == "new"
    assert sorted(path.name for path in output.iterdir()) == [LOCK_FILE, "arch"]  # no staging, nothing set aside


def test_a_crash_between_the_renames_keeps_the_old_export_and_the_next_run_restores_it(tmp_path, monkeypatch):
    output = tmp_path / "export"
    _candidate(output / "arch", "old")
    real_rename = Path.rename

    def killed_before_the_second_rename(self, target):
        if self.name == "arch" and self.parent.name.startswith(STAGING_PREFIX):
            raise KeyboardInterrupt  # the process dies here; the staging folder's cleanup is lost with it
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", killed_before_the_second_rename)
    monkeypatch.setattr("orchestrator.export.publish.shutil.rmtree", lambda *args, **kwargs: None)
    with pytest.raises(KeyboardInterrupt):
        with staging_in(output, print) as staging:
            swap_in(_candidate(staging / "arch", "new"), output / "arch")
    monkeypatch.undo()
    assert not (output / "arch").exists()
    assert [path.name for path in output.glob(REPLACED_PREFIX + "*/arch")] == ["arch"]  # the old one, set aside
    assert list(output.glob(STAGING_PREFIX + "*"))

    logged = []
    with staging_in(output, logged.append):
        assert (output / "arch" / ONNX_FILE).read_text() == "old"
        assert not list(output.glob(REPLACED_PREFIX + "*"))
        assert [path.name for path in output.glob(STAGING_PREFIX + "*")] != []  # only this run's own
    assert sorted(path.name for path in output.iterdir()) == [LOCK_FILE, "arch"]
    assert any("restored" in line for line in logged) and any("removed" in line for line in logged)


def _export(folder: Path, files: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / ONNX_FILE).write_bytes(b"onnx")
    (folder / MANIFEST_FILE).write_text(json.dumps({"arch_id": "a", "files": files}))
    return folder


def test_a_manifest_must_list_the_onnx_model(tmp_path):
    folder = _export(tmp_path / "a", {})
    (folder / "gallery.json").write_text("{}")
    with pytest.raises(ExportError, match=f"does not list {ONNX_FILE}"):
        read_manifest(folder)
    _export(folder, {ONNX_FILE: file_sha256(folder / ONNX_FILE)})
    assert read_manifest(folder)["arch_id"] == "a"


@pytest.mark.parametrize("name", ["../outside.txt", "sub/../../outside.txt", "/etc/hostname", "link/outside.txt",
                                  "", "..\\outside.txt"])
def test_a_manifest_cannot_point_outside_its_folder(tmp_path, name):
    (tmp_path / "outside.txt").write_text("not the export's")
    folder = tmp_path / "exports" / "a"
    folder.mkdir(parents=True)
    os.symlink(tmp_path, folder / "link")
    digest = file_sha256(tmp_path / "outside.txt")
    _export(folder, {ONNX_FILE: file_sha256(_export(folder, {}) / ONNX_FILE), name: digest})
    with pytest.raises(ExportError, match="not a file inside the export folder"):
        read_manifest(folder)
