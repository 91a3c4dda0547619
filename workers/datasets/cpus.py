"""How many CPUs this process may use: the fewest of its CPU affinity and its cgroup's CPU quota.

``os.cpu_count()`` counts the host's cores: in a container limited to 2 CPUs on a 64-core host it
says 64, and 64 decoding threads then share 2 CPUs (and hold 64 chunks in memory). Rules:

* affinity: the CPUs ``os.sched_getaffinity(0)`` lists (``taskset``, a container's cpuset), or
  ``os.cpu_count()`` where the platform has no affinity;
* quota, cgroup v2: ``cpu.max`` (``max <period>`` or ``<quota> <period>``) of the process's cgroup
  (``/proc/self/cgroup``'s ``0::<path>`` below ``CGROUP_ROOT``) and of each cgroup above it, the
  smallest; cgroup v1: ``cpu.cfs_quota_us`` over ``cpu.cfs_period_us`` in ``CGROUP_V1_CPU``
  (a quota of -1 is none);
* a quota of 1.5 CPUs is 2 threads (rounded up: a decoding thread also waits on the disk); the
  answer is at least 1; a file that is absent or unreadable sets no quota.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
CGROUP_V1_CPU = CGROUP_ROOT / "cpu"
PROC_SELF_CGROUP = Path("/proc/self/cgroup")


def usable_cpus() -> int:
    """The CPUs this process may use (module rules), at least 1."""
    try:
        affinity = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        affinity = os.cpu_count() or 1
    quotas = [quota for quota in (_cgroup_v2_quota(), _cgroup_v1_quota()) if quota is not None]
    return max(1, min([affinity, *(math.ceil(quota) for quota in quotas)]))


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _cgroup_v2_quota() -> float | None:
    """The smallest ``cpu.max`` quota (in CPUs) of this process's cgroup v2 and the cgroups above it."""
    lines = (_read(PROC_SELF_CGROUP) or "").splitlines()
    own = next((line[3:] for line in lines if line.startswith("0::")), "/")
    folder = CGROUP_ROOT / own.strip("/")
    quotas = []
    while True:
        quota = _quota_of(_read(folder / "cpu.max"))
        if quota is not None:
            quotas.append(quota)
        if folder == CGROUP_ROOT or CGROUP_ROOT not in folder.parents:
            break
        folder = folder.parent
    return min(quotas, default=None)


def _quota_of(cpu_max: str | None) -> float | None:
    fields = (cpu_max or "").split()
    if len(fields) != 2 or fields[0] == "max":
        return None
    try:
        quota, period = int(fields[0]), int(fields[1])
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _cgroup_v1_quota() -> float | None:
    quota, period = _read(CGROUP_V1_CPU / "cpu.cfs_quota_us"), _read(CGROUP_V1_CPU / "cpu.cfs_period_us")
    return _quota_of(f"{quota} {period}") if quota and period else None
