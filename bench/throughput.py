"""Training and inference throughput of gallery backbones and query candidates on this machine.

The sizing of the embedded default (which paragon, how many images, which FLOPs budget) follows
from these figures. Each figure is the median of several timed steps after a warm-up step.

    .venv/bin/python bench/throughput.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
import warnings

import psutil
import torch
import torch.nn.functional as F

from evaluators import count_complexity
from search_space import build_query_model, create_space
from workers.gallery.model import GalleryArchitecture, GalleryEmbeddingNet


def _rates(model, batch, labels, classify, repeats):
    optimizer = torch.optim.AdamW(model.parameters())
    train, infer = [], []
    for index in range(repeats + 1):
        started = time.perf_counter()
        loss = F.cross_entropy(classify(model(batch)), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if index:
            train.append(len(batch) / (time.perf_counter() - started))
        with torch.inference_mode():
            started = time.perf_counter()
            model(batch)
            if index:
                infer.append(len(batch) / (time.perf_counter() - started))
    return statistics.median(train), statistics.median(infer)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(f"### Throughput, {time.strftime('%Y-%m-%d')}, {platform.processor() or platform.machine()}, "
          f"{psutil.cpu_count()} CPUs, torch {torch.__version__}")
    print("\n| model | MFLOPs | threads | train img/s | inference img/s |\n|---|---|---|---|---|")
    torch.set_num_threads(2)
    for backbone, stride in (("resnet18", 2), ("resnet10t", 2)):
        model = GalleryEmbeddingNet(GalleryArchitecture(backbone, 128, 10, 1, 28, stem_stride=stride))
        mflops = count_complexity(model, (1, 28, 28)).mflops
        batch, labels = torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))
        train, infer = _rates(model, batch, labels, model.classify, args.repeats)
        print(f"| gallery {backbone}, stem stride {stride} | {mflops:.1f} | 2 | {train:.0f} | {infer:.0f} |")
    torch.set_num_threads(1)
    space = create_space("mnv3_28", embed_dim=128, in_chans=1)
    import random

    rng = random.Random(0)
    specs = [space.smallest()] + sorted((space.sample(rng) for _ in range(3)), key=lambda s: s.resolution)
    for spec in specs:
        model = build_query_model(spec).to(memory_format=torch.channels_last)
        mflops = count_complexity(model, (1, spec.resolution, spec.resolution)).mflops
        batch = torch.randn(256, 1, spec.resolution, spec.resolution).contiguous(memory_format=torch.channels_last)
        labels = torch.randint(0, 10, (256,))
        head = torch.nn.Linear(128, 10)
        train, infer = _rates(model, batch, labels, head, args.repeats)
        print(f"| query {spec.arch_id} ({spec.short_name()}) | {mflops:.2f} | 1 | {train:.0f} | {infer:.0f} |")


if __name__ == "__main__":
    main()
