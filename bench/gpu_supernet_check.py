"""GPU check of the supernet's worker side, without Ray or MLflow (for machines that lack them).

Trains the gallery model, embeds the splits once, trains the compatible supernet on CUDA (sandwich
rule, in-place distillation, optionally bf16 autocast), then evaluates the same sampled candidates
three ways: from scratch (``--epochs``), inherited + ``--finetune-epochs`` of fine-tuning, and
inherited zero-shot (batch norm recalibrated only). Prints and writes JSON: seconds, images/s,
cross-model R@1/mAP per candidate and mode.

    python bench/gpu_supernet_check.py --data-root /usr/share/datasets/fashion-mnist --out result.json
"""

from __future__ import annotations

import argparse
import json
import random
import time

import torch

from evaluators import RetrievalEvaluator, count_complexity
from search_space import build_query_model, create_space
from search_space.supernet import ElasticSupernet, extract_subnet
from workers.compatibility.bn_calibration import recalibrate_batch_norm
from workers.compatibility.candidate import fine_tune_candidate
from workers.compatibility.supernet import SupernetTrainingSettings, train_supernet
from workers.compatibility.training import CompatibilityTrainingSettings, TrainingRun
from workers.datasets import DataRequest, load_retrieval_data
from workers.gallery.embeddings import compute_gallery_embeddings
from workers.gallery.model import GalleryCheckpoint
from workers.gallery.training import GalleryTrainingSettings, train_gallery
from workers.training.fit import OptimSettings
from workers.training.preprocess import ModelInput, embed_images, to_model_input

LOSSES = {"own_classifier": 1.0, "bct_influence": 1.0, "cosine_alignment": 10.0}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--query-size", type=int, default=2000)
    parser.add_argument("--gallery-size", type=int, default=8000)
    parser.add_argument("--supernet-epochs", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--finetune-epochs", type=int, default=1)
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--max-mflops", type=float, default=3.0)
    parser.add_argument("--bf16", action="store_true")
    parser.add_argument("--out", default=None)
    parser.add_argument("--device", default="cuda", help="cpu only to try the script on a small run")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this check needs a GPU")
    result: dict = {"gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else "none",
                    "torch": torch.__version__, "args": vars(args)}
    data = load_retrieval_data("fashion_mnist", DataRequest(root=args.data_root, train_size=args.train_size,
                                                            query_size=args.query_size,
                                                            gallery_size=args.gallery_size, seed=0))
    evaluator = RetrievalEvaluator()
    gallery_model = train_gallery(data, GalleryTrainingSettings(
        backbone="resnet10t", embed_dim=128, stem_stride=2, optim=OptimSettings(epochs=2, batch_size=256, lr=2e-3)),
        device)
    gallery = compute_gallery_embeddings(GalleryCheckpoint(gallery_model, "gpu-check", data.mean, data.std, {}),
                                         data, device)
    result["paragon_r1"] = evaluator.evaluate(gallery.query, data.query.labels, gallery.gallery,
                                              data.gallery.labels).recall_at_1
    space = create_space("mnv3_28", embed_dim=128, in_chans=1)

    torch.manual_seed(0)
    supernet = ElasticSupernet(space).to(device)
    optim = OptimSettings(epochs=args.supernet_epochs, batch_size=256, lr=3e-3)
    training = CompatibilityTrainingSettings(optim, LOSSES, channels_last=False, mixed_precision=args.bf16)
    settings = SupernetTrainingSettings(training, num_random_subnets=2, distillation_weight=1.0)
    started = time.perf_counter()
    history = train_supernet(supernet, settings, TrainingRun(data, gallery, device))
    if device.type == "cuda":
        torch.cuda.synchronize()
    result["supernet"] = {"seconds": time.perf_counter() - started,
                          "images_per_second": [round(h["images_per_second"]) for h in history],
                          "final_loss": history[-1]["loss"],
                          "gpu_max_memory_mb": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0}
    print("supernet:", result["supernet"], flush=True)
    state = {name: tensor.detach().cpu() for name, tensor in supernet.state_dict().items()}

    rng = random.Random(0)
    candidates = []
    while len(candidates) < args.candidates:
        spec = space.sample(rng)
        if count_complexity(build_query_model(spec), (1, spec.resolution, spec.resolution)).mflops <= args.max_mflops:
            candidates.append(spec)

    def evaluate(model, spec):
        queries = embed_images(model, data.query.images, ModelInput(data.mean, data.std, spec.resolution, device))
        metrics = evaluator.evaluate(queries, data.query.labels, gallery.gallery, data.gallery.labels)
        return round(metrics.recall_at_1, 2), round(metrics.mean_average_precision, 2)

    rows = []
    for spec in candidates:
        row = {"arch": spec.short_name()}
        for mode in ("scratch", "inherit", "inherit_zero_shot"):
            started = time.perf_counter()
            torch.manual_seed(0)
            if mode == "scratch":
                model = build_query_model(spec).to(device)
            else:
                model = extract_subnet(state, spec).to(device)
                inputs = to_model_input(data.train.images, data.mean, data.std, spec.resolution, device)
                recalibrate_batch_norm(model, inputs, 2000)
            epochs = {"scratch": args.epochs, "inherit": args.finetune_epochs, "inherit_zero_shot": 0}[mode]
            if epochs:
                training = CompatibilityTrainingSettings(OptimSettings(epochs=epochs, batch_size=256, lr=3e-3), LOSSES,
                                                     channels_last=False)
                fine_tune_candidate(model, spec.resolution, training, TrainingRun(data, gallery, device))
            r1, mean_ap = evaluate(model, spec)
            row[mode] = {"r1": r1, "map": mean_ap, "seconds": round(time.perf_counter() - started, 2)}
        rows.append(row)
        print(row, flush=True)
    result["candidates"] = rows
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
