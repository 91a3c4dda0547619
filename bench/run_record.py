"""Where and when a bench ran, recorded beside its figures: date (UTC), CPU, its vector instruction
sets, cores, load average, commit and whether the working tree differed from it (docs/benchmarks.md
asks for each).

The instruction sets matter because machines of one CPU name differ: this project's sessions ran on
AMD EPYC machines with and without AVX-512, and a query model's training steps were 1.24x faster in
all with oneDNN's AVX-512 kernels than with its AVX2 ones on the same CPU (0.89-1.54x per
architecture; docs/benchmarks.md, "Depthwise weight gradients on the CPU"): compare figures only
between records with the same ``cpu_flags``."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The flags that decide which kernels PyTorch and oneDNN run on x86 (vector width, bfloat16, AMX).
VECTOR_FLAGS = ("avx2", "avx512f", "avx512_bf16", "amx_tile")


def cpu_description() -> tuple[str, list[str]]:
    """The CPU's model name and which of ``VECTOR_FLAGS`` it has (from /proc/cpuinfo; elsewhere the
    processor name and no flags)."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or platform.machine(), []
    name = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor() or platform.machine())
    flags = set(next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), []))
    return name, [flag for flag in VECTOR_FLAGS if flag in flags]


def machine_record() -> dict:
    def run(*command):
        try:
            return subprocess.run(command, capture_output=True, text=True, cwd=REPO).stdout.strip()
        except OSError:
            return ""

    cpu, flags = cpu_description()
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu, "cpu_flags": flags,
            "cores": os.cpu_count(),
            "load_average": [round(value, 2) for value in os.getloadavg()],
            "commit": run("git", "rev-parse", "--short", "HEAD"),
            "dirty": bool(run("git", "status", "--porcelain", "--untracked-files=no"))}
