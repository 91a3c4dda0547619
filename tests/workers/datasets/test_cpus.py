"""Decoding threads follow the CPUs the process may use (affinity, cgroup quota), not the host's cores."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workers.datasets import cpus, decoding
from workers.datasets.decoding import DecodeSettings, decode_into

HOST_CORES = set(range(64))  # a large host, as a container sees it


@pytest.fixture
def cgroup(tmp_path, monkeypatch):
    """An empty cgroup tree for the process (``0::/job/step``) on a 64-core host; tests write the quota files."""
    monkeypatch.setattr(cpus, "CGROUP_ROOT", tmp_path / "cgroup")
    monkeypatch.setattr(cpus, "CGROUP_V1_CPU", tmp_path / "cgroup" / "cpu")
    monkeypatch.setattr(cpus, "PROC_SELF_CGROUP", tmp_path / "proc_self_cgroup")
    (tmp_path / "proc_self_cgroup").write_text("0::/job/step\n")
    (tmp_path / "cgroup" / "job" / "step").mkdir(parents=True)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: HOST_CORES)
    return tmp_path / "cgroup"


def test_without_a_quota_the_affinity_decides(cgroup):
    (cgroup / "cpu.max").write_text("max 100000\n")
    assert cpus.usable_cpus() == 64


def test_a_cgroup_v2_quota_anywhere_above_the_process_caps_the_cpus(cgroup):
    (cgroup / "job" / "cpu.max").write_text("250000 100000\n")  # 2.5 CPUs for the job
    (cgroup / "job" / "step" / "cpu.max").write_text("max 100000\n")
    assert cpus.usable_cpus() == 3  # rounded up
    (cgroup / "job" / "step" / "cpu.max").write_text("50000 100000\n")
    assert cpus.usable_cpus() == 1


def test_a_cgroup_v1_quota_caps_the_cpus(cgroup):
    (cgroup / "cpu").mkdir()
    (cgroup / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    (cgroup / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert cpus.usable_cpus() == 64
    (cgroup / "cpu" / "cpu.cfs_quota_us").write_text("400000\n")
    assert cpus.usable_cpus() == 4


def test_the_affinity_of_a_real_process_caps_the_cpus():
    # The module alone (runpy), without the package's imports: the child starts in a second.
    script = (f"import os, runpy; usable_cpus = runpy.run_path({str(Path(cpus.__file__))!r})['usable_cpus']; "
              "os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); print(usable_cpus())")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "1"


def test_decoding_starts_one_thread_per_usable_cpu(cgroup, tmp_path, monkeypatch):
    (cgroup / "cpu.max").write_text("100000 100000\n")  # 1 CPU in a container on a 64-core host
    for index in range(6):
        Image.fromarray(np.full((8, 8), index, np.uint8)).save(tmp_path / f"{index}.png")
    started = []

    class Recording(ThreadPoolExecutor):
        def __init__(self, max_workers=None, **options):
            started.append(max_workers)
            super().__init__(max_workers, **options)

    monkeypatch.setattr(decoding, "ThreadPoolExecutor", Recording)
    monkeypatch.setattr(decoding, "CHUNK_BYTES", 64)  # one image per chunk: six chunks could use six threads
    written = {}
    decode_into(np.array([str(tmp_path / f"{index}.png") for index in range(6)]), DecodeSettings(8, 1),
                lambda start, records: written.update({start: records[0, 0, 0, 0]}))
    assert started == [1] and written == {index: index for index in range(6)}
