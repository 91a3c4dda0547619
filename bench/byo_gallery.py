"""A search against a gallery model cmpnas did not train, in every format a team might ship it.

1. Trains a timm resnet18 (3 channels, 32 px input, 10-class head) with plain PyTorch on the
   train split of the search's data (Fashion-MNIST: gray images repeated to 3 channels). No cmpnas
   training code is used; the embedding is the pooled 512-d features.
2. Saves it as a state_dict (``torch.save``), traced TorchScript and ONNX, and writes its
   embeddings of every split with ``cmpnas gallery embed`` (the ``embeddings`` source).
3. Runs ``cmpnas search`` from the CLI against each source: the full search on ``timm``, and a
   short one (same seed, same first candidates) on each other source, to show they agree.
4. Trains fixed architectures against the gallery with the two built BCT classifiers,
   ``prototypes`` and ``linear_probe``, side by side over seeds.

Prints a Markdown block for docs/benchmarks.md and writes ``bench/results/byo_gallery.json``.

    .venv/bin/python bench/byo_gallery.py [--workdir DIR] [--gallery-epochs 4] [--candidates 8] [--seeds 0 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from evaluators import RetrievalEvaluator  # noqa: E402
from orchestrator.config import load_config  # noqa: E402
from orchestrator.setup.data import load_data  # noqa: E402
from orchestrator.setup.gallery import gallery_request  # noqa: E402
from orchestrator.tracking.client import SearchTracker  # noqa: E402
from search_space import build_query_model, create_space  # noqa: E402
from workers.compatibility.candidate import fine_tune_candidate  # noqa: E402
from workers.compatibility.training import CompatibilityTrainingSettings, TrainingRun
from workers.gallery.embeddings import compute_gallery_embeddings  # noqa: E402
from workers.gallery.sources import load_gallery_model  # noqa: E402
from workers.gallery.sources.timm_weights import PooledFeatures  # noqa: E402
from workers.training.fit import OptimSettings  # noqa: E402
from workers.training.preprocess import ModelInput, embed_images  # noqa: E402

BACKBONE = "resnet18"
SIZE = 32
MEAN, STD = [0.286] * 3, [0.353] * 3  # Fashion-MNIST's statistics, per repeated channel
SOURCES = ("timm", "torchscript", "onnx", "embeddings")


def train_gallery_plainly(data, epochs: int, seed: int = 0) -> torch.nn.Module:
    """timm resnet18 trained with cross-entropy in a plain PyTorch loop: the 'production model'."""
    torch.manual_seed(seed)
    model = timm.create_model(BACKBONE, pretrained=False, num_classes=data.num_classes)
    images = torch.as_tensor(np.repeat(data.train.images, 3, axis=1)).float().div(255)
    images = F.interpolate(images, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    images = (images - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    labels = torch.as_tensor(data.train.labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    steps = epochs * ((len(labels) + 127) // 128)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=2e-3, total_steps=steps)
    model.train()
    for epoch in range(epochs):
        order = torch.randperm(len(labels))
        started, total = time.perf_counter(), 0.0
        for start in range(0, len(labels), 128):
            batch = order[start : start + 128]
            loss = F.cross_entropy(model(images[batch]), labels[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        print(f"  gallery epoch {epoch + 1}: loss {total / len(labels):.4f}, {time.perf_counter() - started:.0f} s",
              flush=True)
    return model.eval()


def save_every_format(model: torch.nn.Module, folder: Path) -> dict[str, Path]:
    torch.save(model.state_dict(), folder / "gallery_resnet18.pth")
    pooled = PooledFeatures(model).eval()
    example = torch.rand(2, 3, SIZE, SIZE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.trace(pooled, example).save(str(folder / "gallery.torchscript.pt"))
        torch.onnx.export(pooled, (example,), str(folder / "gallery.onnx"), input_names=["images"],
                          output_names=["embeddings"], dynamic_shapes={"images": {0: torch.export.Dim("batch")}},
                          dynamo=True, opset_version=18, verbose=False)
    return {"timm": folder / "gallery_resnet18.pth", "torchscript": folder / "gallery.torchscript.pt",
            "onnx": folder / "gallery.onnx", "embeddings": folder / "embeddings"}


def source_config(workdir: Path, source: str, path: Path, args, paragon_mflops: float | None) -> Path:
    gallery = {"source": source, "path": str(path), "input": {"size": SIZE, "channels": 3, "mean": MEAN, "std": STD}}
    if source == "torchscript":
        gallery["allow_torchscript"] = True  # the bench's own file, traced above
    if source == "timm":
        gallery["backbone"] = BACKBONE
    if source == "embeddings":
        gallery["mflops"] = paragon_mflops
    tree = {
        "data": {"train_size": args.train_size},
        "gallery": gallery,
        "search": {"num_candidates": args.candidates, "max_mflops": 3.0, "seed": 0},
        "training": {"epochs": args.epochs},
        "tracking": {"uri": f"sqlite:///{workdir / 'mlflow.db'}", "experiment": f"byo-{source}"},
        "output_dir": str(workdir / f"search-{source}"),
    }
    path = workdir / f"{source}.yaml"
    path.write_text(yaml.safe_dump(tree))
    return path


def cmpnas(*arguments: str) -> float:
    started = time.perf_counter()
    subprocess.run([str(Path(sys.executable).with_name("cmpnas")), *arguments], check=True, cwd=REPO)
    return time.perf_counter() - started


def search_record(workdir: Path, source: str) -> dict:
    tracker = SearchTracker.open_existing(f"sqlite:///{workdir / 'mlflow.db'}", f"byo-{source}")
    parent = tracker.client.get_run(tracker.latest_search_run_id())
    metrics = parent.data.metrics
    children = tracker.client.search_runs([tracker.experiment_id],
                                          filter_string=f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'")
    trials = sorted((c.data.params.get("arch_id", "?"), c.data.metrics.get("final_cross_r1"),
                     c.data.metrics.get("final_cross_map")) for c in children)
    front = []
    csv_path = workdir / f"search-{source}" / "pareto.csv"
    if csv_path.exists():
        import csv

        with csv_path.open() as handle:
            front = [row for row in csv.DictReader(handle) if row["pareto"] == "True"]
    return {"source": source, "paragon_r1": metrics.get("paragon_r1"), "paragon_map": metrics.get("paragon_map"),
            "paragon_mflops": metrics.get("paragon_mflops"), "fingerprint": parent.data.tags.get("gallery_fingerprint"),
            "gallery_model_seconds": metrics.get("stage_gallery_model_seconds"),
            "gallery_embedding_seconds": metrics.get("stage_gallery_embedding_seconds"),
            "images_embedded": metrics.get("gallery_images_embedded"), "trials": trials, "front": front}


def compare_classifiers(config_path: Path, seeds: list[int], epochs: int) -> list[dict]:
    """Fixed architectures (smallest, middle, largest of the space) x classifier x seed, trained directly."""
    config = load_config(config_path)
    data = load_data(config)
    gallery = load_gallery_model("timm", gallery_request(config, data.in_chans, data.image_size))
    space = create_space(config.search_space.name, embed_dim=gallery.embed_dim, in_chans=data.in_chans)
    import random

    middle = space.sample(random.Random(0))
    archs = {"smallest": space.smallest(), "sampled": middle, "largest": space.largest()}
    rows = []
    for kind in ("prototypes", "linear_probe"):
        embeddings = compute_gallery_embeddings(gallery, data, torch.device("cpu"), classifier=kind)
        for name, spec in archs.items():
            scores = []
            for seed in seeds:
                torch.manual_seed(seed)
                model = build_query_model(spec)
                settings = CompatibilityTrainingSettings(OptimSettings(epochs=epochs, batch_size=256, lr=3e-3,
                                                                       seed=seed))
                started = time.perf_counter()
                run = TrainingRun(data, embeddings, torch.device("cpu"))
                fine_tune_candidate(model, spec.resolution, settings, run)
                queries = embed_images(model, data.query.images, ModelInput(data.mean, data.std, spec.resolution))
                metrics = RetrievalEvaluator().evaluate(queries, data.query.labels, embeddings.gallery,
                                                        data.gallery.labels)
                scores.append((metrics.recall_at_1, metrics.mean_average_precision, time.perf_counter() - started))
                print(f"  {kind} {name} seed {seed}: cross R@1 {scores[-1][0]:.2f}, mAP {scores[-1][1]:.2f}", flush=True)
            rows.append({"classifier": kind, "arch": name, "arch_id": spec.arch_id,
                         "cross_r1": [s[0] for s in scores], "cross_map": [s[1] for s in scores]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--gallery-epochs", type=int, default=4)
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--candidates", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    workdir = (args.workdir or Path(f"/tmp/cmpnas-byo-{os.getpid()}")).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    load = os.getloadavg()
    print(f"workdir {workdir}; load before: {load[0]:.2f}", flush=True)

    base = load_config(overrides=[f"data.train_size={args.train_size}"])
    data = load_data(base)
    started = time.perf_counter()
    model = train_gallery_plainly(data, args.gallery_epochs)
    gallery_training_s = time.perf_counter() - started
    paths = save_every_format(model, workdir)

    configs = {source: source_config(workdir, source, paths[source], args, None) for source in SOURCES[:3]}
    timm_model = load_gallery_model("timm", gallery_request(load_config(configs["timm"]), data.in_chans,
                                                            data.image_size))
    paragon_mflops = timm_model.measure_cost().mflops
    configs["embeddings"] = source_config(workdir, "embeddings", paths["embeddings"], args, paragon_mflops)
    embed_wall_s = cmpnas("gallery", "embed", "--config", str(configs["timm"]), "--output", str(paths["embeddings"]))

    walls = {"timm": cmpnas("search", "--config", str(configs["timm"]))}
    for source in SOURCES[1:]:
        walls[source] = cmpnas("search", "--config", str(configs[source]), "--set", "search.num_candidates=2",
                               "--set", "training.epochs=1", "--set", f"output_dir={workdir / f'search-{source}'}")
    records = {source: search_record(workdir, source) for source in SOURCES}
    classifiers = compare_classifiers(configs["timm"], args.seeds, args.epochs)

    result = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "load_before": load[0], "load_after": os.getloadavg()[0], "gallery_training_seconds": gallery_training_s,
              "gallery_epochs": args.gallery_epochs, "train_size": args.train_size, "paragon_mflops": paragon_mflops,
              "gallery_embed_cli_seconds": embed_wall_s, "search_wall_seconds": walls, "searches": records,
              "classifiers": classifiers}
    out = REPO / "bench" / "results" / "byo_gallery.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print_markdown(result)


def print_markdown(result: dict) -> None:
    main_search = result["searches"]["timm"]
    print(f"\n### Your own gallery model, {result['date']}, {result['machine']}, load {result['load_before']:.2f} "
          f"before, {result['load_after']:.2f} after")
    print(f"- gallery: timm {BACKBONE}, trained with plain PyTorch for {result['gallery_epochs']} epochs on "
          f"{result['train_size']} images ({result['gallery_training_seconds']:.0f} s), 3x{SIZE}x{SIZE} input, "
          f"512-d pooled features, {result['paragon_mflops']:.1f} MFLOPs")
    print(f"- `cmpnas gallery embed` of every split: {result['gallery_embed_cli_seconds']:.0f} s wall (CLI, incl. start)")
    print("\n| source | paragon R@1 | paragon mAP | paragon MFLOPs | load model s | gallery pass s | images embedded | "
          "search wall s | trials (cross R@1) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for source, record in result["searches"].items():
        trials = ", ".join(f"{r1:.2f}" for _, r1, _ in record["trials"] if r1 is not None)
        print(f"| {source} | {record['paragon_r1']:.2f} | {record['paragon_map']:.2f} | {record['paragon_mflops']:.1f} | "
              f"{record['gallery_model_seconds']:.1f} | {record['gallery_embedding_seconds']:.1f} | "
              f"{record['images_embedded']:.0f} | {result['search_wall_seconds'][source]:.0f} | {trials} |")
    print("\nFront of the full search (timm source):\n")
    print("| arch | MFLOPs | cost x | cross R@1 | cross mAP | homo R@1 | gap R@1 |")
    print("|---|---|---|---|---|---|---|")
    for row in main_search["front"]:
        print(f"| {row['arch_id']} | {float(row['mflops']):.2f} | {float(row['cost_reduction']):.1f} | {row['cross_r1']} | "
              f"{row['cross_map']} | {row['homo_r1']} | {row['gap_r1_to_paragon']} |")
    print("\nBCT classifier built from the gallery embeddings, same architectures and seeds:\n")
    print("| classifier | arch | cross R@1 mean [range] | cross mAP mean [range] |")
    print("|---|---|---|---|")
    for row in result["classifiers"]:
        r1, mAP = row["cross_r1"], row["cross_map"]
        print(f"| {row['classifier']} | {row['arch']} ({row['arch_id']}) | {statistics.mean(r1):.2f} "
              f"[{min(r1):.2f}-{max(r1):.2f}] | {statistics.mean(mAP):.2f} [{min(mAP):.2f}-{max(mAP):.2f}] |")


if __name__ == "__main__":
    main()
