"""The embedded default's gallery model trained in float32 and with ``gallery.mixed_precision``, side by
side in one run: training seconds and validation figures of each (workers/training/precision.py).

The data, backbone and schedule are those ``cmpnas search`` trains on first use with
``configs/quickstart.yaml`` (train less validation; scored on the validation halves), on this
process's CPU with ``--threads`` threads. bfloat16 runs only on a CPU with native bfloat16 (the
record names the CPU's flags); elsewhere both rows are float32.

    python bench/gallery_precision.py [--threads 2] [--out bench/results/gallery_precision.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from evaluators import create_task  # noqa: E402
from orchestrator.config import load_config  # noqa: E402
from orchestrator.setup.data import load_search_data  # noqa: E402
from orchestrator.setup.gallery import gallery_training_settings  # noqa: E402
from run_record import machine_record  # noqa: E402
from workers.gallery.training import train_gallery  # noqa: E402
from workers.training.precision import autocast_dtype  # noqa: E402
from workers.training.preprocess import ModelInput, embed_images  # noqa: E402

CPU = torch.device("cpu")


def train_and_score(data, settings) -> dict:
    """One training of ``settings`` on ``data.train``: its seconds and its validation figures."""
    started = time.perf_counter()
    model = train_gallery(data, settings, CPU)
    seconds = time.perf_counter() - started
    model_input = ModelInput(data.mean, data.std, data.image_size, CPU)
    scores = create_task("retrieval").evaluate(
        embed_images(model, data.query.images, model_input), data.query.labels,
        embed_images(model, data.gallery.images, model_input), data.gallery.labels, "validation", data.pair_ids())
    dtype = autocast_dtype(CPU, settings.mixed_precision, on_cpu=True)
    return {"mixed_precision": settings.mixed_precision, "ran_in": "bfloat16" if dtype else "float32",
            "train_seconds": round(seconds, 1), **{name: round(value, 2) for name, value in scores.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "gallery_precision.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    record = machine_record()
    config = load_config(str(REPO / "configs" / "quickstart.yaml"))
    data = load_search_data(config).selection
    settings = gallery_training_settings(config, len(data.train))
    rows = []
    for mixed_precision in (False, True):
        rows.append(train_and_score(data, dataclasses.replace(settings, mixed_precision=mixed_precision)))
        print(json.dumps(rows[-1]), flush=True)
    record.update(load_average_after=[round(value, 2) for value in os.getloadavg()],
                  settings={"threads": args.threads, "backbone": settings.backbone, "epochs": settings.optim.epochs,
                            "train_images": len(data.train)}, rows=rows,
                  speedup=round(rows[0]["train_seconds"] / rows[1]["train_seconds"], 2))
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({"speedup": record["speedup"]}))


if __name__ == "__main__":
    main()
