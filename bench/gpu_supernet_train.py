"""Train the compatible supernet for an existing gallery on a GPU machine that has no Ray or MLflow.

`cmpnas supernet train` is the product's way (a Tune trial on a GPU node, tracked in MLflow). The
lent GPU machine of this project has neither Ray nor MLflow, so this script runs the same worker
code (`workers.compatibility.supernet.train_supernet`, same settings as `supernet_training_settings` of
the quickstart config) against a given gallery checkpoint and writes a checkpoint that a search
with that gallery accepts (the gallery fingerprint is the checkpoint's, not a recomputation).

Before training it times sandwich steps on real batches with cuDNN on and off: every subnet brings
new convolution shapes (sliced channels, cropped kernels, the last short batch), and a per-shape
set-up cost is the suspected cause of the slow CUDA supernet epochs seen earlier. The faster
backend trains; with ``--epochs 0`` the epoch count is chosen from the measured step time so the
run fits ``--budget-seconds``. The checkpoint is rewritten after every epoch, so a run cut short
still leaves the last finished epoch (its ``epochs_done`` says so).

    python bench/gpu_supernet_train.py --gallery gallery.safetensors --data-root DIR \
        --epochs 0 --budget-seconds 300 --out supernet.safetensors --report report.json
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path

import torch

from search_space.supernet import ElasticSupernet, sandwich_specs
from workers.compatibility.supernet import SupernetTrainingSettings, train_supernet
from workers.compatibility.supernet_checkpoint import save_supernet
from workers.compatibility.training import CompatibilityTrainingSettings, TrainingRun
from workers.datasets import DataRequest, load_retrieval_data
from workers.gallery.embeddings import compute_gallery_embeddings
from workers.gallery.model import load_gallery
from workers.training.fit import EpochHooks, OptimSettings
from workers.training.preprocess import to_model_input

QUICKSTART_LOSSES = {"own_classifier": 1.0, "bct_influence": 1.0, "cosine_alignment": 10.0}


def supernet_settings(args: argparse.Namespace, epochs: int) -> SupernetTrainingSettings:
    optim = OptimSettings(epochs=epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                          seed=args.seed)
    training = CompatibilityTrainingSettings(optim, QUICKSTART_LOSSES, channels_last=args.channels_last)
    return SupernetTrainingSettings(training, num_random_subnets=args.num_random_subnets,
                                    distillation_weight=args.distillation_weight)


def time_sandwich_steps(space, data, device, settings: SupernetTrainingSettings, steps: int, warmup: int = 3,
                        same_specs: bool = False, profile_to: Path | None = None) -> float:
    """Median seconds of one sandwich step (forward + backward of every sampled subnet) on a throwaway supernet.

    ``same_specs`` repeats the first step's subnets (no new shapes after warm-up), to tell a
    per-shape cost from a per-step one; ``profile_to`` writes torch.profiler's tables of the timed steps.
    """
    torch.manual_seed(1)
    supernet = ElasticSupernet(space).to(device).train()
    if settings.channels_last:
        supernet = supernet.to(memory_format=torch.channels_last)
    available = min(4096, len(data.train))
    inputs = {r: to_model_input(data.train.images[:available], data.mean, data.std, r, device, settings.channels_last)
              for r in space.resolutions}
    rng = random.Random(12345)
    batch = settings.optim.batch_size
    times = []
    first_specs = sandwich_specs(space, rng, settings.num_random_subnets)
    profiler = None
    for step in range(warmup + steps):
        if step == warmup and profile_to is not None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            profiler = torch.profiler.profile(activities=activities)
            profiler.__enter__()
        index = torch.randint(0, available, (batch,), device=device)
        started = time.perf_counter()
        total = 0.0
        specs = first_specs if same_specs else sandwich_specs(space, rng, settings.num_random_subnets)
        for spec in specs:
            total = total + supernet(inputs[spec.resolution][index], spec).square().sum()
        total.backward()
        supernet.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            times.append(time.perf_counter() - started)
    if profiler is not None:
        profiler.__exit__(None, None, None)
        averages = profiler.key_averages()
        tables = [averages.table(sort_by=key, row_limit=25) for key in ("self_cpu_time_total", "self_device_time_total")]
        profile_to.write_text("\n\n".join(tables))
    times.sort()
    return times[len(times) // 2]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gallery", type=Path, required=True, help="the gallery checkpoint of the search")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--train-size", type=int, default=10000)
    parser.add_argument("--query-size", type=int, default=2000)
    parser.add_argument("--gallery-size", type=int, default=8000)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--space", default="mnv3_28")
    parser.add_argument("--epochs", type=int, default=0, help="0: as many as fit --budget-seconds")
    parser.add_argument("--budget-seconds", type=float, default=300.0)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--weight-decay", type=float, default=0.05)
    parser.add_argument("--num-random-subnets", type=int, default=2)
    parser.add_argument("--distillation-weight", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cudnn", choices=("auto", "on", "off"), default="auto")
    parser.add_argument("--channels-last", action="store_true",
                        help="channels-last tensors, as training.channels_last (the config's default) sets them")
    parser.add_argument("--probe-steps", type=int, default=20)
    parser.add_argument("--profile", type=Path, default=None,
                        help="also write torch.profiler tables of the probe with the chosen backend here")
    parser.add_argument("--device", default="cuda", help="cpu only to try the script on a small run")
    parser.add_argument("--out", type=Path, required=True, help="supernet checkpoint to write")
    parser.add_argument("--report", type=Path, default=None, help="JSON: probe timings, settings, per-epoch stats")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device: this script is for a GPU machine (use --device cpu to try it)")
    started_all = time.perf_counter()
    report: dict = {"gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else "none",
                    "torch": torch.__version__, "args": {k: str(v) for k, v in vars(args).items()}}

    def write_report() -> None:
        if args.report:
            args.report.write_text(json.dumps(report, indent=1))

    data = load_retrieval_data("fashion_mnist", DataRequest(
        root=args.data_root, train_size=args.train_size, query_size=args.query_size,
        gallery_size=args.gallery_size, seed=args.data_seed))
    gallery = compute_gallery_embeddings(load_gallery(args.gallery, device), data, device)
    from search_space import create_space

    space = create_space(args.space, embed_dim=gallery.embed_dim, in_chans=data.in_chans)
    probe_settings = supernet_settings(args, epochs=1)

    probes = {}
    backends = ("on", "off") if args.cudnn == "auto" else (args.cudnn,)
    for backend in backends:
        torch.backends.cudnn.enabled = backend == "on"
        probes[backend] = time_sandwich_steps(space, data, device, probe_settings, args.probe_steps)
        same = time_sandwich_steps(space, data, device, probe_settings, args.probe_steps, same_specs=True)
        probes[f"{backend}, same subnets every step"] = same
        print(f"cudnn {backend}: median sandwich step {probes[backend] * 1000:.1f} ms "
              f"({same * 1000:.1f} ms with the same subnets every step)", flush=True)
    chosen = min(backends, key=probes.get)
    torch.backends.cudnn.enabled = chosen == "on"
    if args.profile is not None:
        probes[f"{chosen}, profiled"] = time_sandwich_steps(space, data, device, probe_settings, 5,
                                                            profile_to=args.profile)
    report["probe_step_seconds"] = probes
    report["cudnn"] = chosen
    steps_per_epoch = math.ceil(len(data.train) / args.batch_size)
    epochs = args.epochs
    if epochs <= 0:
        # 1.3x the probed step: the probe leaves out the loss terms, optimizer and per-epoch checkpoint.
        left = args.budget_seconds - (time.perf_counter() - started_all)
        epochs = max(1, int(left / (1.3 * probes[chosen] * steps_per_epoch)))
    report["epochs"] = epochs
    print(f"training {epochs} epochs ({steps_per_epoch} steps each) with cudnn {chosen}", flush=True)
    write_report()

    settings = supernet_settings(args, epochs)
    torch.manual_seed(args.seed)
    supernet = ElasticSupernet(space).to(device)
    if args.channels_last:
        supernet = supernet.to(memory_format=torch.channels_last)
    history: list[dict] = []
    train_started, train_started_cpu = time.perf_counter(), time.process_time()

    def on_epoch(epoch: int, stats: dict[str, float]) -> None:
        seconds = time.perf_counter() - train_started
        history.append({"epoch": epoch, "seconds": round(seconds, 1), **{k: round(v, 4) for k, v in stats.items()}})
        # The same info keys as `cmpnas supernet train` writes, plus where it ran.
        info = {"dataset": data.name, "train_images": len(data.train), "epochs_done": epoch, "epochs": epochs,
                "num_random_subnets": args.num_random_subnets, "distillation_weight": args.distillation_weight,
                "loss_weights": QUICKSTART_LOSSES, "train_seconds": seconds,
                "cpu_seconds": time.process_time() - train_started_cpu, "device": str(device),
                "gpu": report["gpu"], "cudnn": chosen, "batch_size": args.batch_size, "lr": args.lr,
                "trained_by": "bench/gpu_supernet_train.py"}
        save_supernet(args.out, supernet, gallery.fingerprint, info)
        report["history"] = history
        write_report()
        print(f"epoch {epoch}/{epochs}: loss {stats['loss']:.4f}, {stats['images_per_second']:.0f} images/s, "
              f"{seconds:.0f}s", flush=True)

    train_supernet(supernet, settings, TrainingRun(data, gallery, device, hooks=EpochHooks(on_epoch=on_epoch)))
    report["train_seconds"] = time.perf_counter() - train_started
    if device.type == "cuda":
        report["gpu_max_memory_mb"] = torch.cuda.max_memory_allocated() / 2**20
    write_report()


if __name__ == "__main__":
    main()
