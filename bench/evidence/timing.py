"""The ``latency`` command: the paragon and every finished run's query model timed in ONE invocation
on one machine (``cost.latency`` of the protocol: ONNX Runtime, batch 1, one intra-op thread, the
protocol's warm-up and runs, the median), so the table's latency ratios compare like with like.

Each model is its ONNX export as ``cmpnas export`` ships it (``evaluators.latency``): the runs'
``model.onnx`` (``measure``), the paragon's exported here once (``paragon.onnx``). The figures go to
``<workdir>/<protocol>/latency.json`` with the machine; a later invocation replaces them all (a
run finished since is timed with the others again, never beside figures of another session).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from evaluators.latency import LATENCY_METHOD, LatencySettings, export_onnx, measure_onnx_latency
from workers.gallery.model import load_gallery
from workers.storage.durable_write import replaced_durably, write_text_durably

from measure import ONNX_FILE
from paragon import machine

LATENCY_FILE = "latency.json"


def protocol_latency_settings(cost_section: dict) -> LatencySettings:
    latency = cost_section["latency"]
    if latency.get("runtime") != "onnxruntime" or latency.get("statistic") != "median":
        raise ValueError(f"cost.latency {latency}: this runner times ONNX Runtime medians")
    return LatencySettings(batch=int(latency["batch"]), intra_op_threads=int(latency["intra_op_threads"]),
                           warmup=int(latency["warmup"]), runs=int(latency["runs"]))


def paragon_onnx(paragon_folder: Path) -> tuple[Path, tuple[int, int, int]]:
    """The paragon's ONNX export (written once) and its input shape."""
    checkpoint = load_gallery(paragon_folder / "gallery.safetensors")
    arch = checkpoint.model.arch
    shape = (arch.in_chans, arch.image_size, arch.image_size)
    path = paragon_folder / "paragon.onnx"
    if not path.exists():
        with replaced_durably(path) as temporary:
            export_onnx(checkpoint.model, shape, temporary)
    return path, shape


def time_everything(workdir: Path, paragon_folder: Path, settings: LatencySettings, log) -> dict:
    """Every finished run's model and the paragon, timed now; written to ``latency.json`` and returned."""
    path, shape = paragon_onnx(paragon_folder)
    paragon_ms = measure_onnx_latency(path, shape, settings).median_ms
    log(f"paragon: {paragon_ms:.3f} ms")
    runs = {}
    for result_path in sorted((workdir / "runs").glob("*/*/seed*/result.json")):
        result = json.loads(result_path.read_text())
        folder = result_path.parent
        milliseconds = measure_onnx_latency(folder / ONNX_FILE, tuple(result["input_shape"]), settings).median_ms
        runs[str(folder.relative_to(workdir))] = milliseconds
        log(f"{folder.relative_to(workdir)}: {milliseconds:.3f} ms")
    record = {"measured": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "machine": machine(),
              "method": LATENCY_METHOD, "settings": {"batch": settings.batch, "threads": settings.intra_op_threads,
                                                     "warmup": settings.warmup, "runs": settings.runs},
              "paragon_ms": paragon_ms, "runs_ms": runs}
    write_text_durably(workdir / LATENCY_FILE, json.dumps(record, indent=2) + "\n")
    return record
