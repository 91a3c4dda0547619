"""Where one candidate trial's CPU time goes: a search's trial run in this process, without Ray, part by part.

The trial is ``workers.trial``'s own code (``_CandidateTrial``, ``fine_tune_candidate``) on the
configured data, one intra-op thread as in a search with ``resources.cpus_per_trial: 1``; only
Tune's reporting is left out. Prints the CPU seconds (``time.process_time``, this process's
threads) of: training, the per-epoch validation evaluation, the last epoch's homogeneous and
held-out evaluations, the FLOPs count, the ONNX export plus its ONNX Runtime timing
(``evaluators.latency``), and the per-epoch checkpoint files; then the figures the trial reports.

With ``--gallery`` (a gallery checkpoint trained on this split, e.g. a quickstart search's
``outputs/quickstart/gallery.safetensors``) the targets are that model's embeddings, so the
figures are the search's (a candidate of that search reproduces its recorded figures). Without
it they are random unit vectors: the CPU profile holds, the accuracy is meaningless.

    python bench/trial_profile.py [--gallery PATH] [--arch ARCH_JSON] [--epochs 3,2] [--config configs/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from evaluators import count_complexity  # noqa: E402
from evaluators.latency import measure_model_latency  # noqa: E402
from orchestrator.config.loading import load_config  # noqa: E402
from orchestrator.setup.data import load_search_data  # noqa: E402
from search_space import ArchSpec, create_space, estimate_mflops  # noqa: E402
from workers.compatibility.candidate import fine_tune_candidate  # noqa: E402
from workers.compatibility.training import CompatibilityTrainingSettings, TrainingRun  # noqa: E402
from workers.gallery.embeddings import GalleryEmbeddings, HeldOutSplits, compute_gallery_embeddings, embed_held_out  # noqa: E402
from workers.gallery.model import load_gallery  # noqa: E402
from workers.training.fit import EpochHooks, OptimSettings  # noqa: E402
from workers.trial import SharedTrialInputs, _CandidateTrial, _save_candidate  # noqa: E402


def gallery_side(data, held_out, gallery: Path | None) -> tuple[GalleryEmbeddings, HeldOutSplits]:
    """The gallery model's embeddings of every split (two threads, as the search's driver), or random unit vectors."""
    if gallery is not None:
        torch.set_num_threads(2)
        checkpoint = load_gallery(gallery, "cpu")
        return (compute_gallery_embeddings(checkpoint, data, torch.device("cpu")),
                embed_held_out(checkpoint, held_out, torch.device("cpu")))
    rng = np.random.default_rng(0)

    def unit(count: int) -> np.ndarray:
        vectors = rng.standard_normal((count, 128)).astype(np.float32)
        return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)

    embeddings = GalleryEmbeddings(unit(len(data.train)), unit(len(data.query)), unit(len(data.gallery)),
                                   rng.standard_normal((data.num_classes, 128)).astype(np.float32),
                                   np.zeros(data.num_classes, np.float32), 16.0, "random", 0, 0.0)
    return embeddings, HeldOutSplits(held_out.query, held_out.gallery, unit(len(held_out.query)),
                                     unit(len(held_out.gallery)))


def profile_trial(shared: SharedTrialInputs, spec: ArchSpec) -> tuple[dict[str, float], dict[str, float]]:
    """One trial of ``spec``: CPU seconds per part, and the final figures."""
    data, gallery, seconds, figures = shared.data, shared.gallery, {}, {}

    def timed(part: str, work):
        started = time.process_time()
        result = work()
        seconds[part] = seconds.get(part, 0.0) + time.process_time() - started
        return result

    torch.manual_seed(shared.training.optim.seed)
    trial = _CandidateTrial(spec, shared, torch.device("cpu"))
    shape = (spec.in_chans, spec.resolution, spec.resolution)

    def on_epoch(epoch: int, stats: dict[str, float]) -> None:
        queries = timed("validation (every epoch)", lambda: trial.embed(data.query))
        figures.update(timed("validation (every epoch)", lambda: trial.task.evaluate(
            queries, data.query.labels, gallery.gallery, data.gallery.labels, "cross", data.pair_ids())))
        if epoch == shared.training.optim.epochs:
            figures.update(timed("homogeneous (last epoch)", lambda: trial.task.evaluate(
                queries, data.query.labels, trial.embed(data.gallery), data.gallery.labels, "homo", data.pair_ids())))
            figures.update(timed("held-out splits (last epoch)", trial._held_out_metrics))
            timed("FLOPs count (fvcore)", lambda: count_complexity(trial.model, shape))
            figures["latency_ms"] = timed("ONNX export + ONNX Runtime timing",
                                          lambda: measure_model_latency(trial.model, shape).median_ms)
        with tempfile.TemporaryDirectory() as folder:
            timed("checkpoint files", lambda: (_save_candidate(Path(folder), trial.model, spec),
                                               torch.save(trial.latest_state, Path(folder) / "state.pt")))

    started = time.process_time()
    run = TrainingRun(data, gallery, torch.device("cpu"), None,
                      EpochHooks(on_epoch=on_epoch, state_sink=trial.latest_state.update))
    fine_tune_candidate(trial.model, spec.resolution, shared.training, run)
    total = time.process_time() - started
    return {"training": total - sum(seconds.values()), **seconds, "total": total}, figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=REPO / "configs" / "quickstart.yaml")
    parser.add_argument("--gallery", type=Path, default=None, help="gallery checkpoint trained on this split")
    parser.add_argument("--arch", default=None, help="architecture JSON (a child run's arch_json); default: a "
                        "random one within search.max_mflops")
    parser.add_argument("--epochs", default=None, help="comma-separated epochs to train (default: training.epochs)")
    args = parser.parse_args()
    config = load_config(args.config)
    search_data = load_search_data(config)
    data, held_out = search_data.selection, search_data.held_out
    gallery, held = gallery_side(data, held_out, args.gallery)
    torch.set_num_threads(1)
    space = create_space(config.search_space.name, embed_dim=gallery.embed_dim, in_chans=data.in_chans)
    rng = random.Random(0)
    spec = ArchSpec.from_json(args.arch) if args.arch else next(
        spec for spec in iter(lambda: space.sample(rng), None)
        if estimate_mflops(space, spec) <= (config.search.max_mflops or 3.0))
    print(f"{platform.node()} ({platform.machine()}, {len(os.sched_getaffinity(0))} CPUs); "
          f"arch {spec.arch_id} at {spec.resolution}px, {estimate_mflops(space, spec):.2f} MFLOPs; "
          f"targets {'from ' + str(args.gallery) if args.gallery else 'random'}")
    training = config.training
    for epochs in ([int(e) for e in args.epochs.split(",")] if args.epochs else [training.epochs]):
        shared = SharedTrialInputs(data, gallery, CompatibilityTrainingSettings(
            OptimSettings(epochs, training.batch_size, training.lr, weight_decay=training.weight_decay,
                          seed=config.search.seed),
            loss_weights=dict(training.loss_weights), channels_last=training.channels_last),
            paragon_flops=1, held_out=held)
        seconds, figures = profile_trial(shared, spec)
        print(f"\n{epochs} epochs: {seconds['total']:.1f} CPU-s")
        for part, value in seconds.items():
            if part != "total":
                print(f"  {part:36s} {value:6.1f} CPU-s  {value / seconds['total']:5.1%}")
        print("  " + ", ".join(f"{key} {figures[key]:.2f}" for key in (
            "cross_r1", "cross_map", "homo_r1", "heldout_cross_r1", "heldout_homo_r1", "latency_ms") if key in figures))


if __name__ == "__main__":
    main()
