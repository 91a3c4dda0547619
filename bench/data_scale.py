"""Streaming at scale: peak memory of the driver and of a trial, for a collection and a tenth of it,
and the loader's throughput against what a trial consumes.

1. Writes a synthetic colour collection of ``--images`` JPEGs at ``--size`` px (``--classes``
   classes; each class a tint and a stripe pattern, plus noise), and a tenth of it (the first tenth
   of every class, hard-linked).
2. Saves a timm ``resnet10t`` with seeded random weights as the team's gallery model
   (``gallery.source: timm``, input 48 px): this bench measures memory and throughput, not accuracy.
3. Runs ``cmpnas search`` (2 candidates, ``mnv3_64``, 1 epoch, augmentation on as for any image
   folder) on the tenth, then on the whole, each in its own driver process, which reports its peak
   RSS; each trial reports its own (``final_peak_rss_mb`` on its MLflow run). The query and gallery
   splits are 4% and 16% of each collection; the rest trains.
4. Times the loader alone on the whole collection's train split (random batches of 256, read from
   the shard cache, with and without augmentation) and sets it beside the trials' consumption
   (``images_per_second``) and the time they waited on the loader (``loader_wait_seconds``).

    python bench/data_scale.py --workdir /tmp/data-scale [--images 50000] [--size 128]

Writes ``bench/results/data_scale.json`` (``--results``) and prints the rows for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

GALLERY_BACKBONE, GALLERY_INPUT = "resnet10t", 48
DRIVER = """
import json, resource, sys
from rich.console import Console
from orchestrator.config import load_config
from orchestrator.search.driver import run_search
config = load_config(sys.argv[1])
outcome = run_search(config, Console(stderr=True))
print("DRIVER " + json.dumps({"parent_run_id": outcome.parent_run_id,
      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_collection(root: Path, images: int, classes: int, size: int) -> None:
    if (root / "DONE").exists():
        return
    per_class = images // classes
    rng = np.random.default_rng(0)
    styles = [(rng.integers(30, 226, 3), int(rng.integers(3, 17)), bool(rng.integers(0, 2))) for _ in range(classes)]
    from PIL import Image

    def write_class(label: int) -> None:
        tint, period, vertical = styles[label]
        folder = root / f"class_{label:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        local = np.random.default_rng(label)
        axis = np.arange(size)
        stripes = ((axis // period) % 2 * 60)[None, :, None] if vertical else ((axis // period) % 2 * 60)[:, None, None]
        for index in range(per_class):
            pixels = tint + stripes + local.normal(0, 30, (size, size, 3))
            Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"{index:05d}.jpg", quality=90)

    with ThreadPoolExecutor(os.cpu_count()) as pool:
        list(pool.map(write_class, range(classes)))
    (root / "DONE").write_text("ok")


def link_tenth(source: Path, target: Path) -> None:
    if (target / "DONE").exists():
        return
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(class_dir.iterdir())
        (target / class_dir.name).mkdir(parents=True, exist_ok=True)
        for file in files[: max(1, len(files) // 10)]:
            destination = target / class_dir.name / file.name
            if not destination.exists():
                os.link(file, destination)
    (target / "DONE").write_text("ok")


def save_gallery(path: Path) -> None:
    import timm
    import torch
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = timm.create_model(GALLERY_BACKBONE, pretrained=False, num_classes=0)
    save_file({name: tensor.contiguous() for name, tensor in model.state_dict().items()}, str(path))


def search_config(workdir: Path, name: str, root: Path, images: int, size: int, gallery: Path) -> Path:
    import yaml

    tree = {
        "data": {"source": "image_folder", "root": str(root), "image_size": size, "channels": 3, "train_size": None,
                 "query_size": int(images * 0.04), "gallery_size": int(images * 0.16),
                 "cache_dir": str(workdir / "shard-cache")},
        "gallery": {"source": "timm", "backbone": GALLERY_BACKBONE, "path": str(gallery),
                    "input": {"size": GALLERY_INPUT, "channels": 3}},
        "search_space": {"name": "mnv3_64"},
        "training": {"epochs": 1, "batch_size": 256, "min_steps": 0},
        "search": {"strategy": "random", "num_candidates": 2, "max_concurrent": 2, "max_mflops": 30.0, "seed": 0},
        "resources": {"cpus_per_trial": 1, "measure_latency": False},
        "tracking": {"uri": f"sqlite:///{workdir / 'mlflow.db'}", "experiment": f"data-scale-{name}"},
        "ray": {"num_cpus": 2},
        "output_dir": str(workdir / f"search-{name}"),
    }
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def run_search(config: Path, log: Path) -> dict:
    started = time.perf_counter()
    with log.open("w") as stderr:
        done = subprocess.run([sys.executable, "-c", DRIVER, str(config)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=stderr, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"search failed ({config}); see {log}")
    line = next(line for line in done.stdout.splitlines() if line.startswith("DRIVER "))
    return {**json.loads(line.removeprefix("DRIVER ")), "wall_seconds": time.perf_counter() - started}


def trial_figures(workdir: Path, parent_run_id: str) -> dict:
    import mlflow

    from orchestrator.tracking.tags import PARENT_RUN_TAG

    client = mlflow.MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id], filter_string=f"tags.`{PARENT_RUN_TAG}` = '{parent_run_id}'")
    metrics = [run.data.metrics for run in runs]
    return {
        "trial_peak_rss_mb": max(m["final_peak_rss_mb"] for m in metrics),
        "trial_images_per_second": [round(m["images_per_second"], 1) for m in metrics],
        "trial_loader_wait_seconds": [round(m.get("loader_wait_seconds", float("nan")), 2) for m in metrics],
        "trial_seconds": [round(m["final_trial_seconds"], 1) for m in metrics],
        "gallery_images_embedded": parent.data.metrics["gallery_images_embedded"],
        "stage_data_seconds": parent.data.metrics["stage_data_seconds"],
        "stage_gallery_embedding_seconds": parent.data.metrics["stage_gallery_embedding_seconds"],
        "train_images": int(parent.data.params["train_images"]),
    }


def loader_throughput(config: Path, batches: int = 20) -> dict:
    import torch

    from orchestrator.config import load_config
    from orchestrator.setup.data import load_data
    from workers.training.batches import AugmentationSettings, ImageBatches

    data = load_data(load_config(config))  # the cache exists: nothing is decoded again
    order = torch.randperm(len(data.train), generator=torch.Generator().manual_seed(0))
    figures = {}
    for name, augmentation in (("plain", None), ("augmented", AugmentationSettings())):
        reader = ImageBatches(data.train.images, data.train.labels, torch.device("cpu"), augmentation)
        started = time.perf_counter()
        for step in range(batches):
            reader.read(order[step * 256 : (step + 1) * 256], step)
        figures[f"loader_images_per_second_{name}"] = round(batches * 256 / (time.perf_counter() - started), 1)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--images", type=int, default=50_000)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results" / "data_scale.json")
    args = parser.parse_args()
    workdir = args.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    started = time.perf_counter()
    whole, tenth = workdir / f"images-{args.images}", workdir / f"images-{args.images // 10}"
    write_collection(whole, args.images, args.classes, args.size)
    link_tenth(whole, tenth)
    generated = time.perf_counter() - started
    gallery = workdir / "gallery_resnet10t.safetensors"
    save_gallery(gallery)
    rows = {}
    for name, root, count in (("tenth", tenth, args.images // 10), ("whole", whole, args.images)):
        config = search_config(workdir, name, root, count, args.size, gallery)
        driver = run_search(config, workdir / f"{name}.log")
        rows[name] = {"images": count, **driver, **trial_figures(workdir, driver["parent_run_id"])}
        print(name, json.dumps(rows[name]), flush=True)
    loader = loader_throughput(workdir / "whole.yaml")
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
        "load_before": [round(x, 2) for x in load_before], "load_after": [round(x, 2) for x in os.getloadavg()],
        "image_size": args.size, "classes": args.classes, "collection_seconds": round(generated, 1),
        "rows": rows, **loader,
        "driver_rss_growth": round(rows["whole"]["peak_rss_mb"] / rows["tenth"]["peak_rss_mb"], 3),
        "trial_rss_growth": round(rows["whole"]["trial_peak_rss_mb"] / rows["tenth"]["trial_peak_rss_mb"], 3),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
