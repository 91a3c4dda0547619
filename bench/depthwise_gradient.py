"""A candidate's training step on one CPU thread with PyTorch's depthwise weight gradient and with
``search_space.depthwise``'s, side by side in one run.

For each of ``--archs`` architectures drawn from the space within ``--max-mflops`` (seeded), the
step of a search's trial (uint8 batch -> model input at the candidate's resolution, channels_last,
forward, cosine alignment to fixed unit targets, backward, AdamW) is timed in CPU seconds with the
fast gradient off (``search_space.depthwise.ENABLED = False``: every depthwise layer takes PyTorch's
path) and on, alternating in rounds so that drift of the machine falls on both. Reports the median CPU
time per step of each, their ratio, and the largest difference of the weights after the same steps
(the gradients agree up to float rounding; AdamW turns rounding in near-zero gradients into steps of
up to the learning rate, so the weights part by more as they train).

    python bench/depthwise_gradient.py [--archs 6] [--steps 8] [--rounds 3] [--out bench/results/depthwise_gradient.json]

Which path pays depends on oneDNN's kernels (the module's rules): run it once as the machine is and
once with ``ONEDNN_MAX_CPU_ISA=AVX2`` (oneDNN's AVX2 kernels on the same CPU); the record names both.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

import search_space.depthwise as depthwise  # noqa: E402
from run_record import machine_record  # noqa: E402
from search_space import build_query_model, create_space, estimate_mflops  # noqa: E402
from workers.training.preprocess import ModelInput  # noqa: E402


def timed_steps(step: Callable[[], None], steps: int, fast: bool) -> list[float]:
    """CPU seconds of each of ``steps`` calls of ``step``, the fast gradient on or off."""
    depthwise.ENABLED = fast
    seconds = []
    for _ in range(steps):
        started = time.process_time()
        step()
        seconds.append(time.process_time() - started)
    return seconds


def training_step(model: torch.nn.Module, model_input: ModelInput, images: torch.Tensor,
                  targets: torch.Tensor) -> Callable[[], None]:
    """One step of ``model`` (AdamW, its own optimizer) towards ``targets`` on ``images``, as a search's trial."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)

    def step() -> None:
        loss = 10 * (1 - F.cosine_similarity(model(model_input(images)), targets)).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def compare(spec, space, args) -> dict:
    """One architecture: the step's median CPU time each way, and how far the weights drifted apart."""
    torch.manual_seed(0)
    plain = build_query_model(spec).to(memory_format=torch.channels_last).train()
    fast = copy.deepcopy(plain)
    model_input = ModelInput((0.286,), (0.353,), spec.resolution, "cpu", True)
    generator = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (args.batch_size, 1, 28, 28), dtype=torch.uint8, generator=generator)
    targets = F.normalize(torch.randn(args.batch_size, spec.embed_dim, generator=generator), dim=1)
    steps = {on: training_step(model, model_input, images, targets) for model, on in ((plain, False), (fast, True))}
    seconds: dict[bool, list[float]] = {False: [], True: []}
    for on in (False, True):  # warm-up, not counted
        timed_steps(steps[on], 2, on)
    for _ in range(args.rounds):
        for on in (False, True):
            seconds[on] += timed_steps(steps[on], args.steps, on)
    drift = max((a - b).abs().max().item() for a, b in zip(plain.parameters(), fast.parameters()))
    plain_ms, fast_ms = (1000 * statistics.median(seconds[on]) for on in (False, True))
    return {"arch_id": spec.arch_id, "resolution": spec.resolution, "mflops": round(estimate_mflops(space, spec), 3),
            "pytorch_ms_per_step": round(plain_ms, 1), "fast_ms_per_step": round(fast_ms, 1),
            "speedup": round(plain_ms / fast_ms, 2), "max_weight_difference": drift}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--space", default="mnv3_28")
    parser.add_argument("--archs", type=int, default=6)
    parser.add_argument("--max-mflops", type=float, default=3.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "depthwise_gradient.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    record = machine_record()
    # What decides which path pays (search_space.depthwise.pays_on): the CPU's AVX2 and AVX-512 and a
    # oneDNN cap; PyTorch's own capability beside them, which ATEN_CPU_CAPABILITY can lower.
    has_avx2, has_avx512_core = depthwise.cpu_vector_support()
    record.update(cpu_capability=torch.backends.cpu.get_cpu_capability(), avx2=has_avx2,
                  avx512_core=has_avx512_core, onednn_max_cpu_isa=depthwise.onednn_isa_cap(),
                  default_path="fast" if depthwise.pays_on_this_cpu() else "pytorch")
    space = create_space(args.space, embed_dim=128, in_chans=1)
    rng = random.Random(args.seed)
    specs = []
    while len(specs) < args.archs:
        spec = space.sample(rng)
        if estimate_mflops(space, spec) <= args.max_mflops:
            specs.append(spec)
    rows = []
    for spec in specs:
        rows.append(compare(spec, space, args))
        print(json.dumps(rows[-1]), flush=True)
    speedups = [row["speedup"] for row in rows]
    summary = {"geometric_mean_speedup": round(statistics.geometric_mean(speedups), 2),
               "total_pytorch_ms": round(sum(row["pytorch_ms_per_step"] for row in rows), 1),
               "total_fast_ms": round(sum(row["fast_ms_per_step"] for row in rows), 1)}
    print(json.dumps(summary))
    record.update(load_average_after=[round(value, 2) for value in os.getloadavg()],
                  settings=vars(args) | {"out": str(args.out)}, rows=rows, summary=summary)
    args.out.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
