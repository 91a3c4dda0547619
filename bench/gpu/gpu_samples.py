"""GPU utilisation and memory per phase of bench/gpu/run_gpu.sh, from its nvidia-smi samples.

    python bench/gpu/gpu_samples.py SAMPLES.csv PHASES.csv [--out FILE.json]

SAMPLES.csv is ``nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,memory.total
--format=csv,noheader,nounits -lms 500`` (local time); PHASES.csv has lines ``name,start,end`` in
seconds since the epoch. Per phase: the samples in it, mean and peak utilisation (%), the share of
samples with the GPU busy (> 0 %), and peak memory used (MiB, the whole GPU: every process on it).
"""

from __future__ import annotations

import argparse
import json
import statistics
from datetime import datetime


def read_samples(path: str) -> list[tuple[float, float, float]]:
    samples = []
    with open(path) as handle:
        for line in handle:
            fields = [field.strip() for field in line.split(",")]
            try:
                when = datetime.strptime(fields[0], "%Y/%m/%d %H:%M:%S.%f").timestamp()
                samples.append((when, float(fields[1]), float(fields[2])))
            except (ValueError, IndexError):  # a header, a cut last line, or [N/A]
                continue
    return samples


def per_phase(samples: list[tuple[float, float, float]], phases: list[tuple[str, float, float]]) -> dict:
    figures = {}
    for name, start, end in phases:
        inside = [(util, memory) for when, util, memory in samples if start <= when <= end]
        if not inside:
            figures[name] = {"samples": 0, "seconds": round(end - start, 1)}
            continue
        utils = [util for util, _ in inside]
        figures[name] = {"samples": len(inside), "seconds": round(end - start, 1),
                         "mean_utilisation_pct": round(statistics.fmean(utils), 1), "peak_utilisation_pct": max(utils),
                         "busy_share": round(sum(util > 0 for util in utils) / len(utils), 2),
                         "peak_memory_mib": max(memory for _, memory in inside)}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("samples")
    parser.add_argument("phases")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    with open(args.phases) as handle:
        phases = [(name, float(start), float(end)) for name, start, end in
                  (line.strip().split(",") for line in handle if line.count(",") == 2)]
    figures = per_phase(read_samples(args.samples), phases)
    text = json.dumps(figures, indent=1)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
