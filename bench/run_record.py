"""Where and when a bench ran, recorded beside its figures: date (UTC), CPU, cores, load average,
commit and whether the working tree differed from it (docs/benchmarks.md asks for each)."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def machine_record() -> dict:
    def run(*command):
        try:
            return subprocess.run(command, capture_output=True, text=True, cwd=REPO).stdout.strip()
        except OSError:
            return ""

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu, "cores": os.cpu_count(),
            "load_average": [round(value, 2) for value in os.getloadavg()],
            "commit": run("git", "rev-parse", "--short", "HEAD"),
            "dirty": bool(run("git", "status", "--porcelain", "--untracked-files=no"))}
