"""GPU check of the worker side, without Ray or MLflow (for machines that lack them).

Trains the gallery model, embeds the splits once, and fine-tunes candidates on CUDA in float32
and with bfloat16 autocast, printing images/s, peak GPU memory and cross-model R@1 (FAISS on the
CPU). The full cluster path (Ray trials on GPUs, fractional packing) is `bench/gpu_check.sh`.

    python bench/gpu_worker_check.py --data-root /usr/share/datasets/fashion-mnist --out result.json
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import time

import torch

from evaluators import RetrievalEvaluator, count_complexity
from search_space import build_query_model, create_space
from workers.compatibility.candidate import fine_tune_candidate
from workers.compatibility.training import CompatibilityTrainingSettings, TrainingRun
from workers.datasets import DataRequest, load_retrieval_data
from workers.gallery.embeddings import compute_gallery_embeddings
from workers.gallery.model import GalleryCheckpoint
from workers.gallery.training import GalleryTrainingSettings, train_gallery
from workers.training.fit import EpochHooks, OptimSettings
from workers.training.preprocess import ModelInput, embed_images


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--train-size", type=int, default=20000)
    parser.add_argument("--gallery-epochs", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--out", default=None)
    parser.add_argument("--device", default="cuda", help="cpu only to try the script itself on a small run")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs a GPU")
    on_gpu = device.type == "cuda"
    result: dict = {"gpu": torch.cuda.get_device_name(0) if on_gpu else "none", "torch": torch.__version__, "python": platform.python_version()}
    data = load_retrieval_data("fashion_mnist", DataRequest(root=args.data_root, train_size=args.train_size,
                                                            query_size=2000, gallery_size=8000, seed=0))
    evaluator = RetrievalEvaluator()

    started = time.perf_counter()
    gallery_history: list[dict] = []
    settings = GalleryTrainingSettings(backbone="resnet10t", embed_dim=128,
                                       optim=OptimSettings(epochs=args.gallery_epochs, batch_size=256, lr=2e-3, seed=0))
    model = train_gallery(data, settings, device, on_epoch=lambda epoch, stats: gallery_history.append(stats))
    result["gallery_train_seconds"] = time.perf_counter() - started
    result["gallery_train_images_per_second"] = max(stats["images_per_second"] for stats in gallery_history)
    checkpoint = GalleryCheckpoint(model=model, fingerprint="gpu-check", mean=data.mean, std=data.std, info={})
    gallery = compute_gallery_embeddings(checkpoint, data, device)
    result["gallery_embedding"] = {"images": gallery.images_embedded, "seconds": gallery.seconds}
    paragon = evaluator.evaluate(gallery.query, data.query.labels, gallery.gallery, data.gallery.labels)
    result["paragon_r1"] = paragon.recall_at_1
    result["paragon_mflops"] = count_complexity(model.cpu(), (1, 28, 28)).mflops

    space = create_space("mnv3_28", embed_dim=128, in_chans=1)
    specs = {"largest": space.largest(), "smallest": space.smallest(), "sampled": space.sample(random.Random(0))}
    result["candidates"] = []
    for name, spec in specs.items():
        for mixed_precision in (False, True):
            torch.manual_seed(0)
            if on_gpu:
                torch.cuda.reset_peak_memory_stats()
            candidate = build_query_model(spec).to(device)
            training = CompatibilityTrainingSettings(
                optim=OptimSettings(epochs=args.epochs, batch_size=256, lr=3e-3, seed=0),
                loss_weights={"own_classifier": 1.0, "bct_influence": 1.0, "cosine_alignment": 10.0},
                channels_last=False, mixed_precision=mixed_precision)
            history: list[dict] = []
            started = time.perf_counter()
            hooks = EpochHooks(on_epoch=lambda epoch, stats: history.append(stats))
            fine_tune_candidate(candidate, spec.resolution, training, TrainingRun(data, gallery, device, hooks=hooks))
            seconds = time.perf_counter() - started
            model_input = ModelInput(data.mean, data.std, spec.resolution, device)
            queries = embed_images(candidate, data.query.images, model_input)
            cross = evaluator.evaluate(queries, data.query.labels, gallery.gallery, data.gallery.labels)
            row = {"candidate": name, "arch": spec.short_name(), "bf16": mixed_precision,
                   "mflops": count_complexity(build_query_model(spec), (1, spec.resolution, spec.resolution)).mflops,
                   "train_seconds": seconds, "images_per_second": max(s["images_per_second"] for s in history),
                   "gpu_max_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if on_gpu else 0.0, "cross_r1": cross.recall_at_1}
            result["candidates"].append(row)
            print(json.dumps(row), flush=True)
    print(json.dumps({k: v for k, v in result.items() if k != "candidates"}, indent=1))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
